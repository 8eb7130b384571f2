//! The local side of `send -r DIR`: every regular file under a folder, with the stored
//! path it goes to (`TOP/relative/path`, in NFC), found by a walk that never follows a
//! symbolic link (docs/protocol-v4.md, "Names and paths").
//!
//! Why a walk of its own rather than a crate: what it must not do (follow a link, stop at
//! an unreadable folder, send a name the server's rules refuse) matters more than what it
//! does, and each of those is a [`Found`] the caller reports in its place.
//!
//! The walk is streamed: it holds the sorted entries of the folders on the way down to
//! where it is (a folder's entries are read whole to be sorted), never the whole tree.
//! Siblings are sorted by the bytes of their NFC names, a folder as its name and a `/`,
//! so files come out in byte order of their stored paths, the order of the server's
//! listings (a `--dry-run` can compare the two).

use crate::protocol::v4::names::{self, MAX_PATH_COMPONENTS};
use std::ffi::OsString;
use std::fs::FileType;
use std::io;
use std::path::{Path, PathBuf};
use unicode_normalization::UnicodeNormalization;

/// What the walk found, in byte order of the stored paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A regular file, to be stored at `stored` (NFC).
    File {
        /// Where it is.
        path: PathBuf,
        /// The path it is stored at.
        stored: String,
    },
    /// A regular file whose stored path the rules refuse (or that another name in its
    /// folder would take): it is not sent, the others are.
    Refused {
        /// Where it is.
        path: PathBuf,
        /// The path it would be stored at (lossily shown if it is not text).
        stored: String,
        /// Which rule it breaks.
        why: String,
    },
    /// Not sent, with why: a symbolic link (never followed), a special file (a FIFO, a
    /// socket, a device), a folder that cannot be read or is too deep.
    Skipped {
        /// Where it is.
        path: PathBuf,
        /// Why it is not sent.
        why: String,
    },
    /// A folder with no entry at all: folders exist only as the paths of files, so there
    /// is nothing to store for it.
    EmptyFolder {
        /// Where it is.
        path: PathBuf,
    },
}

/// A walk of a folder (see the module doc); an iterator of [`Found`].
#[derive(Debug)]
pub struct Walk {
    /// The folders on the way down, the deepest last.
    stack: Vec<Level>,
    /// The top folder, when it is empty (reported once).
    empty_top: Option<PathBuf>,
}

/// One folder being walked: its entries not yet looked at.
#[derive(Debug)]
struct Level {
    dir: PathBuf,
    /// The stored path of the folder.
    stored: String,
    /// Depth in components of `stored`.
    depth: usize,
    entries: std::vec::IntoIter<Entry>,
    /// The previous entry's NFC name: two names that normalise alike would be one path.
    last: Option<String>,
}

#[derive(Debug)]
struct Entry {
    name: OsString,
    kind: FileType,
    /// The NFC name, or `None` when the name is not UTF-8.
    nfc: Option<String>,
}

impl Entry {
    /// Byte order of the stored paths: a folder sorts as its name and a `/`.
    fn key(&self) -> Vec<u8> {
        let mut key = match &self.nfc {
            Some(nfc) => nfc.as_bytes().to_vec(),
            None => self.name.as_encoded_bytes().to_vec(),
        };
        if self.kind.is_dir() {
            key.push(b'/');
        }
        key
    }
}

impl Walk {
    /// A walk of `dir`, whose files are stored as `top/…` (`top` normalised to NFC). `dir`
    /// itself is opened as named (a link given on the command line is the user's choice);
    /// nothing below it is reached through a link.
    pub fn new(dir: &Path, top: &str) -> io::Result<Walk> {
        let top: String = top.nfc().collect();
        let entries = read_sorted(dir)?;
        if entries.is_empty() {
            return Ok(Walk { stack: Vec::new(), empty_top: Some(dir.to_owned()) });
        }
        let level = Level {
            dir: dir.to_owned(),
            stored: top,
            depth: 1,
            entries: entries.into_iter(),
            last: None,
        };
        Ok(Walk { stack: vec![level], empty_top: None })
    }

    /// What the entry `entry` of the deepest folder is; `None` when it is a folder now
    /// being walked (its files come next).
    fn look_at(&mut self, entry: Entry) -> Option<Found> {
        let level = self.stack.last_mut().expect("called with a folder being walked");
        let path = level.dir.join(&entry.name);
        let Some(nfc) = entry.nfc.clone() else {
            let shown = entry.name.to_string_lossy();
            let stored = format!("{}/{shown}", level.stored);
            return Some(Found::Refused { path, stored, why: "its name is not UTF-8 text".into() });
        };
        let stored = format!("{}/{nfc}", level.stored);
        if level.last.replace(nfc.clone()).as_deref() == Some(nfc.as_str()) {
            let why = "another name in its folder is the same once normalised to NFC".into();
            return Some(Found::Refused { path, stored, why });
        }
        if entry.kind.is_symlink() {
            return Some(Found::Skipped { path, why: "a symbolic link (never followed)".into() });
        }
        if entry.kind.is_dir() {
            return self.enter(path, stored);
        }
        if !entry.kind.is_file() {
            let why = "not a regular file (a FIFO, a socket or a device)".into();
            return Some(Found::Skipped { path, why });
        }
        match names::check_path(&stored) {
            Ok(()) => Some(Found::File { path, stored }),
            Err(why) => Some(Found::Refused { path, stored, why: why.to_string() }),
        }
    }

    /// Goes down into the folder at `path`, or says why not.
    fn enter(&mut self, path: PathBuf, stored: String) -> Option<Found> {
        let depth = self.stack.last().map_or(0, |l| l.depth) + 1;
        if depth >= MAX_PATH_COMPONENTS {
            let why = format!(
                "a folder {depth} levels deep: stored paths have at most {MAX_PATH_COMPONENTS} components"
            );
            return Some(Found::Skipped { path, why });
        }
        match read_sorted(&path) {
            Ok(entries) if entries.is_empty() => Some(Found::EmptyFolder { path }),
            Ok(entries) => {
                let entries = entries.into_iter();
                self.stack.push(Level { dir: path, stored, depth, entries, last: None });
                None
            }
            Err(e) => Some(Found::Skipped { path, why: format!("the folder cannot be read: {e}") }),
        }
    }
}

impl Iterator for Walk {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        if let Some(path) = self.empty_top.take() {
            return Some(Found::EmptyFolder { path });
        }
        loop {
            let level = self.stack.last_mut()?;
            let Some(entry) = level.entries.next() else {
                self.stack.pop();
                continue;
            };
            if let Some(found) = self.look_at(entry) {
                return Some(found);
            }
        }
    }
}

/// The entries of `dir` (their own types: a link is a link), sorted as the module doc says.
fn read_sorted(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let nfc = name.to_str().map(|n| n.nfc().collect());
        entries.push(Entry { kind: entry.file_type()?, name, nfc });
    }
    entries.sort_by_cached_key(Entry::key);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn stored(walk: Walk) -> Vec<String> {
        walk.map(|found| match found {
            Found::File { stored, .. } => stored,
            Found::Refused { stored, why, .. } => format!("refused {stored}: {why}"),
            Found::Skipped { path, .. } => {
                format!("skipped {}", path.file_name().unwrap().to_string_lossy())
            }
            Found::EmptyFolder { path } => {
                format!("empty {}", path.file_name().unwrap().to_string_lossy())
            }
        })
        .collect()
    }

    #[test]
    fn files_come_in_byte_order_of_their_stored_paths_with_folders_as_name_and_slash() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        fs::create_dir_all(top.join("b/c")).unwrap();
        for file in ["b.txt", "b0", "b/c/d", "b/a", "a"] {
            fs::write(top.join(file), file).unwrap();
        }
        let found = stored(Walk::new(top, "t").unwrap());
        assert_eq!(found, ["t/a", "t/b.txt", "t/b/a", "t/b/c/d", "t/b0"]);
        let mut sorted = found.clone();
        sorted.sort();
        assert_eq!(found, sorted, "the server's listing order");
    }

    #[test]
    fn links_special_files_and_empty_folders_are_reported_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"outside").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        std::os::unix::fs::symlink(outside.path(), top.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), top.join("file-link")).unwrap();
        fs::create_dir(top.join("empty")).unwrap();
        // The mkfifo tool: `unsafe` is for `crate::sys` alone.
        let made = std::process::Command::new("mkfifo").arg(top.join("fifo")).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        fs::write(top.join("real"), b"x").unwrap();
        let found = stored(Walk::new(top, "t").unwrap());
        assert_eq!(
            found,
            ["empty empty", "skipped fifo", "skipped file-link", "skipped out", "t/real"]
        );
    }

    #[test]
    fn names_are_normalised_to_nfc_and_a_name_the_rules_refuse_is_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        fs::write(top.join("cafe\u{301}"), b"nfd").unwrap();
        fs::write(top.join(".securexfer-part-x"), b"reserved").unwrap();
        fs::write(top.join("ok"), b"ok").unwrap();
        let found = stored(Walk::new(top, "Cafe\u{301}s").unwrap());
        assert_eq!(found.len(), 3);
        assert!(found[0].starts_with("refused Caf\u{e9}s/.securexfer-part-x"), "{found:?}");
        assert_eq!(found[1..], ["Caf\u{e9}s/caf\u{e9}", "Caf\u{e9}s/ok"]);
    }

    #[test]
    fn two_names_that_normalise_alike_are_one_path_and_the_second_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("caf\u{e9}"), b"nfc").unwrap();
        fs::write(dir.path().join("cafe\u{301}"), b"nfd").unwrap();
        let found = stored(Walk::new(dir.path(), "t").unwrap());
        assert_eq!(found[0], "t/caf\u{e9}");
        assert!(found[1].starts_with("refused t/caf\u{e9}: another name"), "{found:?}");
    }

    #[test]
    fn an_empty_top_folder_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(stored(Walk::new(dir.path(), "t").unwrap()).len(), 1);
    }
}
