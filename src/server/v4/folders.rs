//! Folders over protocol 4 (docs/protocol-v4.md, "Names and paths"). Folders are implicit,
//! prefixes of stored paths, so the server has one rule about them: a path cannot be both
//! a file and a folder. This module owns that rule ([`clash`]) and the turn
//! that commits and removals of paths which could clash take ([`turn_key`]); the removal
//! of a whole folder is `fetch`'s, beside the removal of one file.

use super::errors;
use crate::protocol::v4::{ErrorCode, ErrorFrame};
use crate::store::PathFacts;

/// The key of the commit turn a path's commit or removal takes: its first component.
///
/// Why: two paths that could clash as a file and a folder (`a` and `a/b/c`) always share
/// it, so the commit of one never runs beside the commit or removal of the other, and what
/// [`clash`] found under the turn stays true until the turn ends. A
/// one-component path keeps its own name as the key, as protocol 3's names (one component
/// each) always had, so the two protocols still take the same turn for the same file.
/// The cost: commits under one top folder take turns (one connection's commits do anyway).
pub(super) fn turn_key(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// The `conflict` a file stored at `path` would be, if it would make a path both a file
/// and a folder: a file is stored at one of its folders, or files are stored under it.
/// Decided on the path's [`PathFacts`], read by the caller (one records call for a put,
/// one for a whole group of commits).
pub(super) fn clash(path: &str, facts: &PathFacts) -> Option<ErrorFrame> {
    if let Some(folder) = &facts.file_at_folder {
        return Some(conflict(&format!(
            "{folder:?} is a file, so {path:?} cannot be stored under it: remove or rename \
             that file first"
        )));
    }
    facts.is_folder.then(|| {
        conflict(&format!(
            "{path:?} is a folder (files are stored under it), so no file can be stored at \
             that path"
        ))
    })
}

fn conflict(message: &str) -> ErrorFrame {
    errors::plain(ErrorCode::Conflict, false, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_clash_share_a_turn_and_others_need_not() {
        assert_eq!(turn_key("a"), "a");
        assert_eq!(turn_key("a/b/c"), "a");
        assert_eq!(turn_key("a/b"), turn_key("a"));
        assert_ne!(turn_key("ab/c"), turn_key("a"));
    }
}
