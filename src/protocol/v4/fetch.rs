//! The payloads of downloads, listings and removal: `LIST` and its answer `LIST_ENTRIES`…
//! `LIST_END`, `GET` and its answer `GET_BEGIN` `DATA`… `GET_END`, `RM` and `REMOVED`
//! (docs/protocol-v4.md, "LIST", "GET", "RM"). As everywhere in the codec, each decodes
//! from exactly its fields' bytes, and fields that contradict each other (a folder with a
//! size, a hash without the "hash known" flag) are malformed, so each value has one
//! encoding.

use super::reader::{Fields, put_name16};
use super::{FrameError, Hash, MAX_CONTROL_PAYLOAD, NO_HASH};

/// `LIST`, `GET` and `RM` without their path: the booleans and numbers before it.
pub const LIST_FIXED_LEN: usize = 1;
/// `GET` without its path: offset, generation.
pub const GET_FIXED_LEN: usize = 8 + 8;
/// `RM` without its path: recursive.
pub const RM_FIXED_LEN: usize = 1;
/// One `LIST_ENTRIES` entry without its path's bytes (its `u16` length counted): kind,
/// flags, size, mtime, stored at, generation, versions, hash, path length.
pub const LIST_ENTRY_FIXED_LEN: usize = 1 + 1 + 8 + 8 + 8 + 8 + 2 + 32 + 2;
/// `LIST_ENTRIES` before its entries: the count.
pub const LIST_ENTRIES_FIXED_LEN: usize = 2;
/// `LIST_END`: entries, bytes, and the client's usage and quotas.
pub const LIST_END_LEN: usize = 6 * 8;
/// `GET_BEGIN`: size, generation, mtime, stored at, flags, hash.
pub const GET_BEGIN_LEN: usize = 8 + 8 + 8 + 8 + 1 + 32;
/// `GET_END`: the hash.
pub const GET_END_LEN: usize = 32;
/// `REMOVED`: files, bytes, kept.
pub const REMOVED_LEN: usize = 3 * 8;
/// The longest path field the codec carries; the path rules allow 1024 bytes.
const PATH_FIELD_MAX: usize = u16::MAX as usize;

/// The flags of a stored copy, as `LIST` entries and `GET_BEGIN` carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CopyFlags {
    /// Bit 0: the records hold the copy's BLAKE3.
    pub hash_known: bool,
    /// Bit 1: a protocol-3 upload its client gave up on (1031): never verified.
    pub unverified: bool,
    /// Bit 2: stored by protocol 3.
    pub protocol3: bool,
}

impl CopyFlags {
    const HASH_KNOWN: u8 = 0x01;
    const UNVERIFIED: u8 = 0x02;
    const PROTOCOL3: u8 = 0x04;
    const ALL: u8 = Self::HASH_KNOWN | Self::UNVERIFIED | Self::PROTOCOL3;

    /// The byte on the wire.
    pub fn as_u8(self) -> u8 {
        (if self.hash_known { Self::HASH_KNOWN } else { 0 })
            | (if self.unverified { Self::UNVERIFIED } else { 0 })
            | (if self.protocol3 { Self::PROTOCOL3 } else { 0 })
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, FrameError> {
        let byte = fields.u8()?;
        if byte & !Self::ALL != 0 {
            return Err(FrameError::ReservedBits { field: "flags", bits: byte & !Self::ALL });
        }
        Ok(CopyFlags {
            hash_known: byte & Self::HASH_KNOWN != 0,
            unverified: byte & Self::UNVERIFIED != 0,
            protocol3: byte & Self::PROTOCOL3 != 0,
        })
    }
}

/// A hash is carried exactly when the flags say it is known.
fn check_hash(flags: CopyFlags, hash: &Hash) -> Result<(), FrameError> {
    if !flags.hash_known && *hash != NO_HASH {
        return Err(FrameError::Inconsistent(
            "a hash without the \"hash known\" flag: it must be zeros when not known",
        ));
    }
    Ok(())
}

/// `LIST`: the files under a path, or the one file it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    /// Every file under the path, or only its direct children (files and folders).
    pub recursive: bool,
    /// A folder, a file, or empty for the client's whole space.
    pub path: String,
}

impl List {
    /// Decodes exactly the payload of a `LIST`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let list =
            List { recursive: f.bool("recursive")?, path: f.name16("path", PATH_FIELD_MAX)? };
        f.finish()?;
        Ok(list)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(LIST_FIXED_LEN + 2 + self.path.len());
        out.push(u8::from(self.recursive));
        put_name16(&mut out, "path", &self.path, PATH_FIELD_MAX)?;
        Ok(out)
    }
}

/// What a listing entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A stored file.
    File,
    /// A folder: some file's path goes on below it (non-recursive listings only).
    Folder,
}

impl EntryKind {
    /// The byte on the wire.
    pub const fn as_u8(self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Folder => 2,
        }
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, FrameError> {
        match fields.u8()? {
            1 => Ok(EntryKind::File),
            2 => Ok(EntryKind::Folder),
            value => Err(FrameError::UnknownValue { field: "kind", value }),
        }
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// A file or a folder.
    pub kind: EntryKind,
    /// What the records know of the copy (none for a folder).
    pub flags: CopyFlags,
    /// Bytes (0 for a folder).
    pub size: u64,
    /// The mtime its upload declared, nanoseconds since 1970; 0 when unknown.
    pub mtime_ns: i64,
    /// When the server stored this copy, seconds since 1970.
    pub stored_at: i64,
    /// The copy's generation (0 for a folder).
    pub generation: u64,
    /// Earlier copies kept.
    pub versions: u16,
    /// The copy's BLAKE3, or [`NO_HASH`] when not known.
    pub hash: Hash,
    /// The full path, relative to the client's space.
    pub path: String,
}

impl ListEntry {
    /// The bytes this entry takes in a `LIST_ENTRIES` payload.
    pub fn encoded_len(&self) -> usize {
        LIST_ENTRY_FIXED_LEN + self.path.len()
    }

    fn read(f: &mut Fields<'_>) -> Result<Self, FrameError> {
        let entry = ListEntry {
            kind: EntryKind::read(f)?,
            flags: CopyFlags::read(f)?,
            size: f.u64()?,
            mtime_ns: f.i64()?,
            stored_at: f.i64()?,
            generation: f.u64()?,
            versions: f.u16()?,
            hash: *f.take::<32>()?,
            path: f.name16("path", PATH_FIELD_MAX)?,
        };
        entry.check()?;
        Ok(entry)
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        self.check()?;
        out.extend_from_slice(&[self.kind.as_u8(), self.flags.as_u8()]);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.stored_at.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.versions.to_le_bytes());
        out.extend_from_slice(&self.hash);
        put_name16(out, "path", &self.path, PATH_FIELD_MAX)
    }

    fn check(&self) -> Result<(), FrameError> {
        check_hash(self.flags, &self.hash)?;
        let folder = self.kind == EntryKind::Folder;
        if folder && (self.size, self.generation, self.flags.as_u8()) != (0, 0, 0) {
            return Err(FrameError::Inconsistent(
                "a folder entry has size, generation and flags 0",
            ));
        }
        Ok(())
    }
}

/// `LIST_ENTRIES`: part of a listing, at least one entry, packed up to the control limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntries {
    /// The entries, in byte order of their paths.
    pub entries: Vec<ListEntry>,
}

impl ListEntries {
    /// Decodes exactly the payload of a `LIST_ENTRIES`. The header bounds the payload to
    /// 64 KiB, so the entries decoded are bounded too (at most 936).
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let count = f.u16()?;
        if count == 0 {
            return Err(FrameError::Inconsistent("a LIST_ENTRIES carries at least one entry"));
        }
        let mut entries = Vec::with_capacity(usize::from(count).min(payload.len() / 70));
        for _ in 0..count {
            entries.push(ListEntry::read(&mut f)?);
        }
        f.finish()?;
        Ok(ListEntries { entries })
    }

    /// The payload's bytes; refused when empty or beyond the control frame's limit.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let count = u16::try_from(self.entries.len())
            .map_err(|_| FrameError::Inconsistent("more entries than a LIST_ENTRIES can count"))?;
        if count == 0 {
            return Err(FrameError::Inconsistent("a LIST_ENTRIES carries at least one entry"));
        }
        let len =
            LIST_ENTRIES_FIXED_LEN + self.entries.iter().map(ListEntry::encoded_len).sum::<usize>();
        if len > MAX_CONTROL_PAYLOAD as usize {
            return Err(FrameError::Inconsistent("the entries do not fit one control frame"));
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&count.to_le_bytes());
        for entry in &self.entries {
            entry.write(&mut out)?;
        }
        Ok(out)
    }
}

/// `LIST_END`: the listing is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEnd {
    /// Entries in this listing.
    pub entries: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The client's bytes stored.
    pub bytes_used: u64,
    /// Its bytes quota (`u64::MAX`: none).
    pub bytes_quota: u64,
    /// The client's files stored.
    pub files_used: u64,
    /// Its files quota (`u64::MAX`: none).
    pub files_quota: u64,
}

impl ListEnd {
    /// Decodes exactly the payload of a `LIST_END`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let end = ListEnd {
            entries: f.u64()?,
            bytes: f.u64()?,
            bytes_used: f.u64()?,
            bytes_quota: f.u64()?,
            files_used: f.u64()?,
            files_quota: f.u64()?,
        };
        f.finish()?;
        Ok(end)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LIST_END_LEN);
        for n in [
            self.entries,
            self.bytes,
            self.bytes_used,
            self.bytes_quota,
            self.files_used,
            self.files_quota,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }
}

/// `GET`: download a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    /// 0, or where a resumed download continues.
    pub offset: u64,
    /// 0 for any copy; with an offset, the generation of the first attempt.
    pub generation: u64,
    /// The file.
    pub path: String,
}

impl Get {
    /// Decodes exactly the payload of a `GET`; a resumed download must name its copy.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let get =
            Get { offset: f.u64()?, generation: f.u64()?, path: f.name16("path", PATH_FIELD_MAX)? };
        f.finish()?;
        get.check()?;
        Ok(get)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        self.check()?;
        let mut out = Vec::with_capacity(GET_FIXED_LEN + 2 + self.path.len());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        put_name16(&mut out, "path", &self.path, PATH_FIELD_MAX)?;
        Ok(out)
    }

    fn check(&self) -> Result<(), FrameError> {
        if self.offset > 0 && self.generation == 0 {
            return Err(FrameError::Inconsistent(
                "a resumed GET (offset above 0) names the generation of its first attempt",
            ));
        }
        Ok(())
    }
}

/// `GET_BEGIN`: opens a `GET` answer; `size - offset` bytes of `DATA` and a `GET_END`
/// follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetBegin {
    /// The whole file's size.
    pub size: u64,
    /// This copy's generation.
    pub generation: u64,
    /// As declared by its upload, or 0.
    pub mtime_ns: i64,
    /// When stored, seconds since 1970.
    pub stored_at: i64,
    /// As in `LIST` entries.
    pub flags: CopyFlags,
    /// The hash in the records, or [`NO_HASH`] when not known.
    pub hash: Hash,
}

impl GetBegin {
    /// Decodes exactly the payload of a `GET_BEGIN`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let begin = GetBegin {
            size: f.u64()?,
            generation: f.u64()?,
            mtime_ns: f.i64()?,
            stored_at: f.i64()?,
            flags: CopyFlags::read(&mut f)?,
            hash: *f.take::<32>()?,
        };
        f.finish()?;
        check_hash(begin.flags, &begin.hash)?;
        Ok(begin)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        check_hash(self.flags, &self.hash)?;
        let mut out = Vec::with_capacity(GET_BEGIN_LEN);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.stored_at.to_le_bytes());
        out.push(self.flags.as_u8());
        out.extend_from_slice(&self.hash);
        Ok(out)
    }
}

/// `GET_END`: the BLAKE3 the server computed reading the whole file for this answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetEnd {
    /// The hash.
    pub hash: Hash,
}

impl GetEnd {
    /// Decodes exactly the payload of a `GET_END`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let end = GetEnd { hash: *f.take()? };
        f.finish()?;
        Ok(end)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.hash.to_vec()
    }
}

/// `RM`: remove a file, or a folder's files with `recursive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rm {
    /// Remove every file under a folder.
    pub recursive: bool,
    /// The file or folder.
    pub path: String,
}

impl Rm {
    /// Decodes exactly the payload of an `RM`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let rm = Rm { recursive: f.bool("recursive")?, path: f.name16("path", PATH_FIELD_MAX)? };
        f.finish()?;
        Ok(rm)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(RM_FIXED_LEN + 2 + self.path.len());
        out.push(u8::from(self.recursive));
        put_name16(&mut out, "path", &self.path, PATH_FIELD_MAX)?;
        Ok(out)
    }
}

/// `REMOVED`: the removal is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// How many of them were kept as versions.
    pub kept: u64,
}

impl Removed {
    /// Decodes exactly the payload of a `REMOVED`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let removed = Removed { files: f.u64()?, bytes: f.u64()?, kept: f.u64()? };
        f.finish()?;
        Ok(removed)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REMOVED_LEN);
        for n in [self.files, self.bytes, self.kept] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }
}
