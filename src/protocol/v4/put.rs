//! The payloads of an upload: `PUT_BEGIN` and its answer `PUT_RECEIVED`, `COMMIT` and
//! `COMMITTED` (docs/protocol-v4.md, "PUT", "COMMIT and DISCARD"). `PUT_END`, `DISCARD`
//! and `DISCARDED` are empty, and `DATA` carries file bytes, so they have no payload type.

use super::FrameError;
use super::reader::{Fields, put_name16};

/// A BLAKE3 hash; all zeros where the design says a hash is absent.
pub type Hash = [u8; 32];
/// The hash that means "none".
pub const NO_HASH: Hash = [0; 32];
/// `size` on the wire for a file whose size is not known in advance (stdin).
pub const UNKNOWN_SIZE: u64 = u64::MAX;
/// `PUT_BEGIN` without its path: options, size, offset, prefix hash, mtime.
pub const PUT_BEGIN_FIXED_LEN: usize = 1 + 8 + 8 + 32 + 8;
/// `PUT_RECEIVED`: size, hash, replaces.
pub const PUT_RECEIVED_LEN: usize = 8 + 32 + 1;
/// `COMMITTED`: generation, stored at, kept version.
pub const COMMITTED_LEN: usize = 8 + 8 + 1;
/// Bit 0 of `PUT_BEGIN`'s options: refuse if a file is stored at the path.
const OPTION_NO_CLOBBER: u8 = 0x01;
/// The longest path field the codec carries; the path rules allow 1024 bytes.
const PATH_FIELD_MAX: usize = u16::MAX as usize;

/// `PUT_BEGIN`: opens an upload; `size - offset` bytes of `DATA` and a `PUT_END` follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutBegin {
    /// Refuse if a file is stored at the path.
    pub no_clobber: bool,
    /// The whole file's size, or `None` when not known in advance.
    pub size: Option<u64>,
    /// 0, or where a resumed upload continues.
    pub offset: u64,
    /// The BLAKE3 of the first `offset` bytes; [`NO_HASH`] when `offset` is 0.
    pub prefix_hash: Hash,
    /// The file's modification time, nanoseconds since 1970 (UTC).
    pub mtime_ns: i64,
    /// Where to store it (see [`super::names::check_path`]).
    pub path: String,
}

impl PutBegin {
    /// Decodes exactly the payload of a `PUT_BEGIN`, refusing fields that contradict each
    /// other: undefined option bits, an offset past the size or with an unknown size, a
    /// prefix hash without an offset.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let options = f.u8()?;
        if options & !OPTION_NO_CLOBBER != 0 {
            return Err(FrameError::ReservedBits {
                field: "options",
                bits: options & !OPTION_NO_CLOBBER,
            });
        }
        let size = match f.u64()? {
            UNKNOWN_SIZE => None,
            size => Some(size),
        };
        let put = PutBegin {
            no_clobber: options & OPTION_NO_CLOBBER != 0,
            size,
            offset: f.u64()?,
            prefix_hash: *f.take::<32>()?,
            mtime_ns: f.i64()?,
            path: f.name16("path", PATH_FIELD_MAX)?,
        };
        f.finish()?;
        put.check()?;
        Ok(put)
    }

    /// The payload's bytes; refused if the fields contradict each other.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        self.check()?;
        let mut out = Vec::with_capacity(PUT_BEGIN_FIXED_LEN + 2 + self.path.len());
        out.push(if self.no_clobber { OPTION_NO_CLOBBER } else { 0 });
        out.extend_from_slice(&self.size.unwrap_or(UNKNOWN_SIZE).to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.prefix_hash);
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        put_name16(&mut out, "path", &self.path, PATH_FIELD_MAX)?;
        Ok(out)
    }

    /// How many bytes of `DATA` follow, or `None` when the size is not known.
    pub fn data_len(&self) -> Option<u64> {
        self.size.map(|size| size - self.offset)
    }

    fn check(&self) -> Result<(), FrameError> {
        match self.size {
            // u64::MAX means "unknown" on the wire, so it cannot be a known size.
            Some(UNKNOWN_SIZE) => Err(FrameError::Inconsistent(
                "a known size must be below 2^64 - 1, which means unknown",
            )),
            None if self.offset > 0 => {
                Err(FrameError::Inconsistent("an upload of unknown size cannot resume"))
            }
            Some(size) if self.offset > size => {
                Err(FrameError::Inconsistent("the offset is past the file's size"))
            }
            _ if self.offset == 0 && self.prefix_hash != NO_HASH => Err(FrameError::Inconsistent(
                "a prefix hash without an offset: it must be zeros when the offset is 0",
            )),
            _ => Ok(()),
        }
    }
}

/// `PUT_RECEIVED`: all of a put's data is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceived {
    /// The bytes the server holds for the file.
    pub size: u64,
    /// The BLAKE3 of the whole file as the server holds it.
    pub hash: Hash,
    /// A stored file will be replaced on commit.
    pub replaces: bool,
}

impl PutReceived {
    /// Decodes exactly the payload of a `PUT_RECEIVED`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let received =
            PutReceived { size: f.u64()?, hash: *f.take()?, replaces: f.bool("replaces")? };
        f.finish()?;
        Ok(received)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PUT_RECEIVED_LEN);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.hash);
        out.push(u8::from(self.replaces));
        out
    }
}

/// `COMMIT`: store the held upload if its hash is this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The client's own BLAKE3 of the file.
    pub hash: Hash,
}

impl Commit {
    /// Decodes exactly the payload of a `COMMIT`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let commit = Commit { hash: *f.take()? };
        f.finish()?;
        Ok(commit)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.hash.to_vec()
    }
}

/// `COMMITTED`: the file is stored, durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The stored copy's generation.
    pub generation: u64,
    /// When the server stored it, seconds since 1970 (UTC).
    pub stored_at: i64,
    /// The copy it replaced was kept as a version.
    pub kept_version: bool,
}

impl Committed {
    /// Decodes exactly the payload of a `COMMITTED`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let committed = Committed {
            generation: f.u64()?,
            stored_at: f.i64()?,
            kept_version: f.bool("kept version")?,
        };
        f.finish()?;
        Ok(committed)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COMMITTED_LEN);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.stored_at.to_le_bytes());
        out.push(u8::from(self.kept_version));
        out
    }
}

/// `RESUME_STATE`: present, size, durable, prefix hash, mtime, expires at.
pub const RESUME_STATE_LEN: usize = 1 + 8 + 8 + 32 + 8 + 8;

/// The smallest declared size whose unfinished upload is worth resuming: a smaller file
/// goes out again in about the time it takes to ask for what the server kept of it, so
/// the client asks `RESUME_QUERY` only from this size on and the server keeps only such
/// uploads (sparing a run of small files the records and syncs of keeping each).
pub const RESUMABLE_FROM: u64 = 1 << 20;

/// `RESUME_QUERY`: how much of an unfinished upload of this path the server holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeQuery {
    /// The path of the interrupted upload.
    pub path: String,
}

impl ResumeQuery {
    /// Decodes exactly the payload of a `RESUME_QUERY`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let query = ResumeQuery { path: f.name16("path", PATH_FIELD_MAX)? };
        f.finish()?;
        Ok(query)
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(2 + self.path.len());
        put_name16(&mut out, "path", &self.path, PATH_FIELD_MAX)?;
        Ok(out)
    }
}

/// `RESUME_STATE`: answers `RESUME_QUERY`. Every field but `present` is zero when nothing
/// is kept, so "nothing" has exactly one encoding ([`ResumeState::NOTHING`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    /// An unfinished upload of the path is kept.
    pub present: bool,
    /// Its declared size.
    pub size: u64,
    /// How many of its first bytes are known durable on the server.
    pub durable: u64,
    /// The BLAKE3 of those `durable` bytes.
    pub prefix_hash: Hash,
    /// The mtime its `PUT_BEGIN` declared, nanoseconds since 1970 (UTC).
    pub mtime_ns: i64,
    /// When the server removes it, seconds since 1970 (UTC).
    pub expires_at: i64,
}

impl ResumeState {
    /// The answer when no unfinished upload of the path is kept.
    pub const NOTHING: ResumeState = ResumeState {
        present: false,
        size: 0,
        durable: 0,
        prefix_hash: NO_HASH,
        mtime_ns: 0,
        expires_at: 0,
    };

    /// Decodes exactly the payload of a `RESUME_STATE`, refusing a durable length past
    /// the size and an absent state with fields that are not zero.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let state = ResumeState {
            present: f.bool("present")?,
            size: f.u64()?,
            durable: f.u64()?,
            prefix_hash: *f.take::<32>()?,
            mtime_ns: f.i64()?,
            expires_at: f.i64()?,
        };
        f.finish()?;
        state.check()?;
        Ok(state)
    }

    /// The payload's bytes; refused if the fields contradict each other.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        self.check()?;
        let mut out = Vec::with_capacity(RESUME_STATE_LEN);
        out.push(u8::from(self.present));
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.durable.to_le_bytes());
        out.extend_from_slice(&self.prefix_hash);
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        Ok(out)
    }

    fn check(&self) -> Result<(), FrameError> {
        if !self.present && *self != ResumeState::NOTHING {
            return Err(FrameError::Inconsistent(
                "a RESUME_STATE without an unfinished upload must have every field zero",
            ));
        }
        if self.durable > self.size {
            return Err(FrameError::Inconsistent("the durable length is past the size"));
        }
        Ok(())
    }
}
