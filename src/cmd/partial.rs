//! A download's partial file: `.NAME.securexfer-partial` beside its target `NAME`, holding
//! the first bytes of one stored copy, whose generation (docs/protocol-v4.md, "GET") is
//! in the file's extended attribute `user.securexfer.generation`. The next `get` of the
//! same name into the same folder asks for the rest of that copy only.
//!
//! Why beside the target, under a fixed name: the next run finds it with one `lstat`, the
//! final rename stays in one folder, and what a killed client leaves is in plain sight.
//! Why the generation in an attribute rather than in the name or a second file: the file
//! is then found without listing the folder and moves with its attribute. A file system
//! without user attributes gets downloads that are not resumable (the partial file is
//! deleted on an interruption, as every temporary file was before).
//!
//! Nothing here is trusted: a partial file's bytes are hashed again before they count,
//! and the download's end is checked against the whole file's hash, so a partial file
//! changed or planted meanwhile costs a second download, never a wrong file.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What ends a partial file's name.
pub const SUFFIX: &str = ".securexfer-partial";
const GENERATION: &CStr = c"user.securexfer.generation";

/// What an interrupted download left beside `local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// The stored copy its bytes are of.
    pub generation: u64,
    /// How many bytes it holds.
    pub len: u64,
}

/// Where the partial file of a download to `local` is.
pub fn path_for(local: &Path) -> PathBuf {
    let name = local.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    local.with_file_name(format!(".{name}{SUFFIX}"))
}

/// The partial file an interrupted download to `local` left, if it is one worth
/// continuing: a regular file (not a link) with bytes and a generation.
pub fn find(local: &Path) -> Option<Left> {
    let path = path_for(local);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.file_type().is_file() || meta.len() == 0 {
        return None;
    }
    let value = securexfer::sys::get_xattr(&path, GENERATION).ok()??;
    let generation = u64::from_le_bytes(value.try_into().ok()?);
    (generation > 0).then_some(Left { generation, len: meta.len() })
}

/// A partial file being written, locked against another `get` writing the same one.
#[derive(Debug)]
pub struct Partial {
    pub file: File,
    pub path: PathBuf,
    /// Its generation is recorded, so an interruption leaves it to be continued.
    pub resumable: bool,
}

/// Opens (or makes) the partial file and locks it; `truncate` empties it, only once the
/// lock is held (another get's bytes are never cut).
fn open(path: &Path, truncate: bool) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    securexfer::sys::lock_exclusive(&file).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(e.kind(), "another get is writing this download now")
        } else {
            e
        }
    })?;
    if truncate {
        file.set_len(0)?;
        // A fresh download is of whichever copy GET_BEGIN names: the old one's mark goes
        // (an empty file is never continued anyway, and `begins` sets the mark anew; a
        // file system without attributes has none to remove).
        let _ = securexfer::sys::remove_xattr(&file, GENERATION);
    }
    Ok(file)
}

impl Partial {
    /// A new, empty partial file for a download to `local` (one left there before is
    /// replaced).
    pub fn fresh(local: &Path) -> io::Result<Partial> {
        let path = path_for(local);
        let file = open(&path, true)?;
        Ok(Partial { file, path, resumable: false })
    }

    /// The partial file `left` describes, with the hash of its first `left.len` bytes,
    /// positioned after them. `None` when it is not that file any more (it changed since
    /// it was found).
    pub fn continued(local: &Path, left: Left) -> io::Result<Option<(Partial, blake3::Hasher)>> {
        let path = path_for(local);
        let mut file = open(&path, false)?;
        if file.metadata()?.len() < left.len {
            return Ok(None);
        }
        let mut hasher = blake3::Hasher::new();
        let copied = io::copy(&mut (&mut file).take(left.len), &mut hasher)?;
        if copied != left.len {
            return Ok(None);
        }
        // Whatever is past `len` (written after it was found) goes.
        file.set_len(left.len)?;
        file.seek(io::SeekFrom::Start(left.len))?;
        Ok(Some((Partial { file, path, resumable: true }, hasher)))
    }

    /// Records which copy the file holds bytes of, before any is written: from then on
    /// an interruption leaves it to be continued. A file system that cannot keep the
    /// attribute leaves the download not resumable, which is no error.
    pub fn begins(&mut self, generation: u64) {
        self.resumable =
            securexfer::sys::set_xattr(&self.file, GENERATION, &generation.to_le_bytes()).is_ok();
    }
}

/// A partial file, done: its attribute removed (it is about to be the user's file).
pub fn finished(file: &File) -> io::Result<()> {
    securexfer::sys::remove_xattr(file, GENERATION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_partial_file_is_found_with_its_generation_and_continued_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("report.pdf");
        assert_eq!(path_for(&local), dir.path().join(".report.pdf.securexfer-partial"));
        assert_eq!(find(&local), None);

        let mut partial = Partial::fresh(&local).unwrap();
        partial.file.write_all(b"first").unwrap();
        // Without a generation it is nothing to continue.
        assert_eq!(find(&local), None);
        partial.begins(42);
        assert!(partial.resumable, "the file system keeps user attributes");
        // Locked while written: another get cannot take it, nor empty it.
        let err = Partial::fresh(&local).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(std::fs::metadata(path_for(&local)).unwrap().len(), 5);
        drop(partial);

        let left = find(&local).unwrap();
        assert_eq!(left, Left { generation: 42, len: 5 });
        let (mut again, hasher) = Partial::continued(&local, left).unwrap().unwrap();
        assert_eq!(hasher.finalize(), blake3::hash(b"first"));
        again.file.write_all(b" then more").unwrap();
        finished(&again.file).unwrap();
        drop(again);
        assert_eq!(std::fs::read(path_for(&local)).unwrap(), b"first then more");
        assert_eq!(find(&local), None, "done: the attribute is gone");
    }

    #[test]
    fn a_link_at_the_partial_name_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("a.txt");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"not ours").unwrap();
        std::os::unix::fs::symlink(&elsewhere, path_for(&local)).unwrap();
        assert_eq!(find(&local), None);
        assert!(Partial::fresh(&local).is_err());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not ours");
    }
}
