//! Listings, downloads and removal as the client speaks them (docs/protocol-v4.md,
//! "Downloads, listings, removal"). The server is not trusted with the client's disk:
//! every path it lists is checked by the path rules and must lie under the path asked for,
//! in byte order; a download must carry exactly the bytes `GET_BEGIN` announced, and hash
//! to both `GET_END`'s BLAKE3 and the recorded one. A breach is the server's protocol
//! error: the session is marked broken and nothing more goes on the connection.
//!
//! Where a download goes is the caller's: bytes are handed to a `Write` as they arrive (at
//! constant memory), and the caller renames its temporary file into place only when
//! [`Session::receive_get`] says the hashes matched.

use super::conn::{ConnError, Part, PartStream};
use super::error::V4Error;
use super::session::{Session, hex, server_broke};
use crate::client::pace::Pace;
use crate::protocol::v4::{
    EntryKind, ErrorFrame, FrameType, Get, GetBegin, GetEnd, Hash, List, ListEnd, ListEntries,
    ListEntry, NO_HASH, Removed, Rm, names,
};
use std::io::Write;
use std::path::Path;
use std::time::Instant;
use unicode_normalization::UnicodeNormalization;

/// A `GET` sent, its answer to come.
pub struct PendingGet {
    path: String,
    parts: PartStream,
    /// Where the download continues (0: from the start).
    offset: u64,
    /// The whole-file hash fed the `offset` bytes the caller already holds.
    prefix: Option<blake3::Hasher>,
}

impl PendingGet {
    /// The stored path asked for (NFC).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where the download continues: 0, or the bytes a resumed one skips.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Gives a resumed download the hash of the bytes before its offset (a hasher fed
    /// exactly [`PendingGet::offset`] bytes), so its end is checked against the whole
    /// file's hash.
    pub fn continue_after(&mut self, prefix: blake3::Hasher) {
        self.prefix = Some(prefix);
    }
}

/// A download that arrived whole and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The stored path.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Its BLAKE3, as computed here and by the server.
    pub hash: Hash,
    /// The copy's generation.
    pub generation: u64,
    /// The mtime its upload declared (0: unknown).
    pub mtime_ns: i64,
    /// Where the download began: more than 0 when it continued a partial file.
    pub resumed_from: u64,
}

impl Session {
    fn check_usable(&self) -> Result<(), V4Error> {
        match &self.broken {
            Some(why) => Err(V4Error::Conn(ConnError::Lost(why.clone()))),
            None => Ok(()),
        }
    }

    /// The server broke an answer: the connection is out of step from here.
    fn broke(&mut self, why: String) -> V4Error {
        self.broken = Some(format!("the server broke protocol 4 earlier: {why}"));
        V4Error::Conn(ConnError::ServerProtocol(why))
    }

    /// `LIST` of `path` (empty: the whole space): each entry goes to `each` as it arrives,
    /// checked (the path rules, under `path`, strictly increasing byte order, no folder in
    /// a recursive listing). Returns the totals of `LIST_END`.
    pub async fn list(
        &mut self,
        path: &str,
        recursive: bool,
        mut each: impl FnMut(ListEntry),
    ) -> Result<ListEnd, V4Error> {
        self.check_usable()?;
        let path = self.request_path(path, true)?;
        let tag = self.conn.new_tag();
        let payload = List { recursive, path: path.clone() }.encode().map_err(V4Error::encode)?;
        let mut parts = self.conn.request_stream(FrameType::List, tag, &payload).await?;
        let mut last: Option<String> = None;
        loop {
            let part = self.conn.next_part(&mut parts).await?;
            match part.frame_type {
                FrameType::ListEntries => {
                    let frame = ListEntries::decode(&part.payload)
                        .map_err(|e| server_broke("LIST_ENTRIES", e))?;
                    for entry in frame.entries {
                        if let Err(why) = check_entry(&entry, &path, recursive, last.as_deref()) {
                            return Err(self.broke(why));
                        }
                        last = Some(order_key(&entry));
                        each(entry);
                    }
                }
                FrameType::ListEnd => {
                    return ListEnd::decode(&part.payload).map_err(|e| server_broke("LIST_END", e));
                }
                _ => return Err(refusal("listing", &part)?),
            }
        }
    }

    /// Sends `GET` for `path` without waiting (several may be pipelined; their answers come
    /// in order, each to its own [`Session::receive_get`]).
    pub async fn send_get(&mut self, path: &str) -> Result<PendingGet, V4Error> {
        self.send_get_from(path, 0, 0).await
    }

    /// Sends `GET` for the bytes of `path` from `offset` on, of the copy of `generation`
    /// (a resumed download: the server answers `conflict` when its copy is another one
    /// now). An offset of 0 asks for the whole of whatever copy is stored.
    pub async fn send_get_from(
        &mut self,
        path: &str,
        offset: u64,
        generation: u64,
    ) -> Result<PendingGet, V4Error> {
        self.check_usable()?;
        let path = self.request_path(path, false)?;
        let tag = self.conn.new_tag();
        let generation = if offset == 0 { 0 } else { generation };
        let payload =
            Get { offset, generation, path: path.clone() }.encode().map_err(V4Error::encode)?;
        let parts = self.conn.request_stream(FrameType::Get, tag, &payload).await?;
        Ok(PendingGet { path, parts, offset, prefix: None })
    }

    /// The answer to a `GET`: its bytes written to `out` as they arrive, then checked. An
    /// `Ok` means every byte announced came, no more, and they hash to what the server
    /// computed and (when it has one) recorded. `progress` is told the bytes so far.
    pub async fn receive_get(
        &mut self,
        pending: PendingGet,
        out: &mut dyn Write,
        local: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<Fetched, V4Error> {
        self.receive_get_with(pending, out, local, progress, |_| Ok(())).await
    }

    /// [`Session::receive_get`], with `begun` told the `GET_BEGIN` before any byte is
    /// written (where a caller records which copy a partial file holds).
    pub async fn receive_get_with(
        &mut self,
        mut pending: PendingGet,
        out: &mut dyn Write,
        local: &Path,
        mut progress: impl FnMut(u64, u64),
        begun: impl FnOnce(&GetBegin) -> Result<(), V4Error>,
    ) -> Result<Fetched, V4Error> {
        let offset = pending.offset;
        let mut hasher = pending.prefix.take().unwrap_or_default();
        if hasher.count() != offset {
            return Err(V4Error::Write {
                path: local.to_owned(),
                cause: std::io::Error::other(format!(
                    "a download resumed at {offset} bytes was given the hash of {}",
                    hasher.count()
                )),
            });
        }
        let parts = &mut pending.parts;
        let first = self.conn.next_part(parts).await?;
        if first.frame_type != FrameType::GetBegin {
            return Err(refusal("downloading", &first)?);
        }
        let begin = GetBegin::decode(&first.payload).map_err(|e| server_broke("GET_BEGIN", e))?;
        if begin.size < offset {
            return Err(self.broke(format!(
                "the server began {} of {} bytes at offset {offset} instead of refusing",
                pending.path, begin.size
            )));
        }
        begun(&begin)?;
        let mut received = offset;
        // `--limit-rate`: the bytes are taken from the connection no faster than the rate;
        // the reader's channel is bounded, so TCP slows the server down in turn.
        let mut pace = self.limit_rate.map(|rate| Pace::new(rate, Instant::now()));
        progress(0, begin.size);
        if offset > 0 {
            progress(offset, begin.size);
        }
        let end = loop {
            let part = self.conn.next_part(parts).await?;
            match part.frame_type {
                FrameType::GetData => {
                    let len = part.payload.len() as u64;
                    if received + len > begin.size {
                        return Err(self.broke(format!(
                            "the server sent more than the {} bytes it announced for {}",
                            begin.size, pending.path
                        )));
                    }
                    hasher.update(&part.payload);
                    out.write_all(&part.payload)
                        .map_err(|cause| V4Error::Write { path: local.to_owned(), cause })?;
                    received += len;
                    progress(received, begin.size);
                    if let Some(pace) = pace.as_mut() {
                        tokio::time::sleep(pace.hold(part.payload.len(), Instant::now())).await;
                    }
                }
                FrameType::GetEnd => {
                    break GetEnd::decode(&part.payload).map_err(|e| server_broke("GET_END", e))?;
                }
                _ => return Err(refusal("downloading", &part)?),
            }
        };
        if received != begin.size {
            return Err(self.broke(format!(
                "the server ended {} after {received} of the {} bytes it announced",
                pending.path, begin.size
            )));
        }
        let ours = *hasher.finalize().as_bytes();
        for (said, theirs) in [("computed", end.hash), ("recorded", begin.hash)] {
            if theirs != ours && !(said == "recorded" && theirs == NO_HASH) {
                return Err(V4Error::DownloadMismatch {
                    path: pending.path,
                    ours: hex(&ours),
                    said,
                    theirs: hex(&theirs),
                });
            }
        }
        Ok(Fetched {
            path: pending.path,
            size: received,
            hash: ours,
            generation: begin.generation,
            mtime_ns: begin.mtime_ns,
            resumed_from: offset,
        })
    }

    /// `RM` of `path`; `REMOVED` means the removal is durable on the server.
    pub async fn rm(&mut self, path: &str) -> Result<Removed, V4Error> {
        self.remove(path, false).await
    }

    /// `RM` of `path`, with `recursive` every file under it when it is a folder (the
    /// totals in `REMOVED`).
    pub async fn remove(&mut self, path: &str, recursive: bool) -> Result<Removed, V4Error> {
        self.check_usable()?;
        let path = self.request_path(path, false)?;
        let tag = self.conn.new_tag();
        let payload = Rm { recursive, path }.encode().map_err(V4Error::encode)?;
        let answer = self.conn.request(FrameType::Rm, tag, &payload).await?;
        match self.conn.answer(answer).await? {
            super::conn::Answer::Frame(p) => {
                Removed::decode(&p).map_err(|e| server_broke("REMOVED", e))
            }
            super::conn::Answer::Refused(error) => {
                Err(V4Error::Refused { step: "removing", error })
            }
        }
    }

    /// `path` in NFC, checked by the rules before it is sent (empty allowed for a listing).
    fn request_path(&self, path: &str, may_be_empty: bool) -> Result<String, V4Error> {
        let path: String = path.nfc().collect();
        if path.is_empty() && may_be_empty {
            return Ok(path);
        }
        names::check_path(&path)
            .map_err(|why| V4Error::BadName { name: path.clone(), why: why.to_string() })?;
        Ok(path)
    }
}

/// The refusal a multi-frame answer ended with (the reader let only an `ERROR` through
/// here).
fn refusal(step: &'static str, part: &Part) -> Result<V4Error, V4Error> {
    let error = ErrorFrame::decode(&part.payload).map_err(|e| server_broke("ERROR", e))?;
    Ok(V4Error::Refused { step, error })
}

/// Where an entry sorts: the server streams the paths it holds in byte order, so a folder
/// (standing for the paths below it) sorts as its path and a `/`: `b.txt` comes before the
/// folder `b`, whose files are `b/…`.
fn order_key(entry: &ListEntry) -> String {
    match entry.kind {
        EntryKind::Folder => format!("{}/", entry.path),
        EntryKind::File => entry.path.clone(),
    }
}

/// Why a listing entry is one no honest server sends, if it is (`last`: the order key of
/// the entry before it).
fn check_entry(
    entry: &ListEntry,
    asked: &str,
    recursive: bool,
    last: Option<&str>,
) -> Result<(), String> {
    let path = entry.path.as_str();
    names::check_path(path)
        .map_err(|why| format!("the listing names {path:?}, which breaks the path rules: {why}"))?;
    let under = asked.is_empty()
        || path == asked
        || path.strip_prefix(asked).is_some_and(|rest| rest.starts_with('/'));
    if !under {
        return Err(format!("the listing of {asked:?} names {path:?}, which is not under it"));
    }
    if last.is_some_and(|last| last.as_bytes() >= order_key(entry).as_bytes()) {
        return Err(format!("the listing is not in byte order at {path:?}"));
    }
    if recursive && entry.kind == EntryKind::Folder {
        return Err(format!("a recursive listing names the folder {path:?}"));
    }
    if !recursive && entry.kind == EntryKind::Folder && path == asked {
        return Err(format!("the listing of {asked:?} names itself as a folder"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::v4::CopyFlags;

    fn entry(path: &str, kind: EntryKind) -> ListEntry {
        ListEntry {
            kind,
            flags: CopyFlags::default(),
            size: 0,
            mtime_ns: 0,
            stored_at: 0,
            generation: 0,
            versions: 0,
            hash: NO_HASH,
            path: path.into(),
        }
    }

    #[test]
    fn a_listing_entry_must_keep_the_rules_lie_under_the_path_and_come_in_order() {
        let file = |p| entry(p, EntryKind::File);
        assert!(check_entry(&file("a"), "", true, None).is_ok());
        assert!(check_entry(&file("docs/a"), "docs", true, None).is_ok());
        assert!(check_entry(&file("docs"), "docs", false, None).is_ok(), "the file itself");
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", "a\\..\\b", ".", "x\u{0}"] {
            assert!(check_entry(&file(bad), "", true, None).is_err(), "{bad:?}");
        }
        assert!(check_entry(&file("docsx/a"), "docs", true, None).is_err(), "not under");
        assert!(check_entry(&file("other"), "docs", true, None).is_err(), "not under");
        assert!(check_entry(&file("a"), "", true, Some("b")).is_err(), "out of order");
        assert!(check_entry(&file("a"), "", true, Some("a")).is_err(), "twice");
        let folder = entry("d", EntryKind::Folder);
        assert!(check_entry(&folder, "", true, None).is_err());
        assert!(check_entry(&folder, "", false, None).is_ok());
        // `d.txt` sorts before `d/…`, so before the folder `d`, and `d0` after it.
        assert!(check_entry(&folder, "", false, Some("d.txt")).is_ok());
        assert_eq!(order_key(&folder), "d/");
        assert!(check_entry(&file("d0"), "", false, Some("d/")).is_ok());
        assert!(check_entry(&file("d"), "", false, Some("d/")).is_err());
    }
}
