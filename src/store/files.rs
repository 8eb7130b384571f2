//! Files on disk: `<storage>/<client id hex>/<file name>`, written through a temporary
//! file in the same directory and renamed into place only when the client confirms.

use crate::protocol::ClientId;
use crate::protocol::TEMP_PREFIX;
use crate::sys::available_bytes;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// The storage directory.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

/// A stored upload: where it is, and the copy it replaced, which is deleted when this is
/// dropped.
#[derive(Debug)]
pub struct Committed {
    /// The path relative to the storage directory.
    pub relative: String,
    /// The earlier copy under a temporary name, if there was one.
    pub replaced: Option<tempfile::TempPath>,
}

impl Storage {
    /// Uses (and creates) `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        Ok(Storage { root: root.canonicalize()? })
    }

    /// The storage directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The relative path a file is stored at. `name` must come from
    /// [`crate::protocol::storage_name`], which guarantees a single safe component.
    pub fn relative_path(id: ClientId, name: &str) -> String {
        format!("{}/{}", id.to_hex(), name)
    }

    /// A new temporary file in the client's directory (created if needed). It deletes
    /// itself when dropped unless [`Storage::commit`] moves it into place.
    pub fn begin_upload(&self, id: ClientId) -> io::Result<NamedTempFile> {
        let dir = self.root.join(id.to_hex());
        fs::create_dir_all(&dir)?;
        tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir)
    }

    /// Makes a finished upload durable and moves it to its final name, replacing an
    /// earlier copy atomically.
    ///
    /// An earlier copy is not deleted here: freeing a large file's blocks is slow (0.17 s
    /// for 1 GiB on ext4 here, in the `rename` that drops its last link), and the client
    /// is waiting for its 2104. It is linked to a temporary name first and handed back;
    /// dropping the [`Committed`] (on a blocking thread, after the reply) deletes it, and a
    /// crash before that leaves a temporary file that start-up cleans away.
    pub fn commit(
        &self,
        upload: tempfile::TempPath,
        id: ClientId,
        name: &str,
    ) -> io::Result<Committed> {
        let relative = Self::relative_path(id, name);
        let target = self.root.join(&relative);
        let dir = target.parent().unwrap_or(&self.root);
        fs::File::open(&upload)?.sync_all()?;
        // No earlier copy (NotFound), or a file system without hard links: then the rename
        // below deletes the earlier copy itself, as it always may.
        let replaced = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .make_in(dir, |aside| fs::hard_link(&target, aside))
            .ok()
            .map(|aside| aside.into_temp_path());
        upload.persist(&target).map_err(|e| e.error)?;
        fs::File::open(dir)?.sync_all()?;
        Ok(Committed { relative, replaced })
    }

    /// Deletes temporary files left by a crash. Returns how many were removed.
    pub fn clean_leftovers(&self) -> io::Result<usize> {
        let mut removed = 0;
        for client_dir in fs::read_dir(&self.root)? {
            let client_dir = client_dir?;
            if !client_dir.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(client_dir.path())? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Bytes available to this process on the storage file system, if the OS says.
    pub fn available_bytes(&self) -> Option<u64> {
        available_bytes(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_upload_dropped_before_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let id = ClientId([7; 16]);
        let mut tmp = storage.begin_upload(id).unwrap();
        tmp.write_all(b"partial").unwrap();
        drop(tmp);
        let client_dir = storage.root().join(id.to_hex());
        assert_eq!(fs::read_dir(client_dir).unwrap().count(), 0);
    }

    #[test]
    fn commit_replaces_the_old_copy_and_cleanup_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let id = ClientId([7; 16]);
        for content in [&b"one"[..], b"two"] {
            let mut tmp = storage.begin_upload(id).unwrap();
            tmp.write_all(content).unwrap();
            let committed = storage.commit(tmp.into_temp_path(), id, "f.txt").unwrap();
            let aside = committed.replaced.as_ref().map(|p| p.to_path_buf());
            match &aside {
                // The first copy replaces nothing; the second keeps the first aside until
                // it is dropped.
                None => assert_eq!(content, b"one"),
                Some(aside) => assert_eq!(fs::read(aside).unwrap(), b"one"),
            }
            assert_eq!(fs::read(storage.root().join(&committed.relative)).unwrap(), content);
            drop(committed);
            assert!(aside.is_none_or(|p| !p.exists()), "the earlier copy is deleted on drop");
        }
        let (_file, kept) = storage.begin_upload(id).unwrap().keep().unwrap();
        assert!(kept.exists());
        assert_eq!(storage.clean_leftovers().unwrap(), 1);
        assert!(!kept.exists());
        assert!(storage.root().join(id.to_hex()).join("f.txt").exists());
    }
}
