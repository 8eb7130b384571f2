//! Protocol 4's codec, as typed values with no I/O (issue 14): the 12-byte frame header,
//! the table of frame types with their payload limits, whole frames out of a buffer, the
//! tag rules of the client's frames, the payloads of the messages of issue 14 (`HELLO`,
//! `WELCOME`, `ERROR`, `REGISTER`, `UPGRADE`, `REGISTERED`, `PUT_BEGIN`, `PUT_RECEIVED`,
//! `COMMIT`, `COMMITTED`), those of issue 15's downloads, listings and removal (`LIST`,
//! `LIST_ENTRIES`, `LIST_END`, `GET`, `GET_BEGIN`, `GET_END`, `RM`, `REMOVED`), the rules
//! of names and paths ([`names`]) and the statement an upgrade signs.
//!
//! Everything here travels inside TLS after the handshake (see
//! [`super::sniff`] and `docs/protocol-v4.md`, sections "Framing" and "Messages"). The
//! server's use of it is `crate::server::v4`, the client's `crate::client::v4`.

mod error;
mod fetch;
mod frame;
mod identity;
mod message;
pub mod names;
mod put;
mod reader;
mod tag;

pub use error::FrameError;
pub use fetch::{
    CopyFlags, EntryKind, GET_BEGIN_LEN, GET_END_LEN, GET_FIXED_LEN, Get, GetBegin, GetEnd,
    LIST_END_LEN, LIST_ENTRIES_FIXED_LEN, LIST_ENTRY_FIXED_LEN, LIST_FIXED_LEN, List, ListEnd,
    ListEntries, ListEntry, REMOVED_LEN, RM_FIXED_LEN, Removed, Rm,
};
pub use frame::{FrameHeader, FrameType, PayloadRule, Role, Side, decode_frame, encode_frame};
pub use identity::{
    Register, Registered, TOKEN_LEN, UPGRADE_CONTEXT, UPGRADE_EXPORTER_LABEL,
    UPGRADE_SIGNATURE_LEN, Upgrade, upgrade_statement,
};
pub use message::{
    ERROR_FIXED_LEN, ErrorCode, ErrorFrame, ErrorKind, ErrorUnit, HELLO_FIXED_LEN, Hello,
    MAX_CLIENT_NAME_LEN, MAX_ERROR_MESSAGE_LEN, MAX_SOFTWARE_LEN, Registration, WELCOME_FIXED_LEN,
    Welcome,
};
pub use put::{
    COMMITTED_LEN, Commit, Committed, Hash, NO_HASH, PUT_BEGIN_FIXED_LEN, PUT_RECEIVED_LEN,
    PutBegin, PutReceived, RESUMABLE_FROM, RESUME_STATE_LEN, ResumeQuery, ResumeState,
    UNKNOWN_SIZE,
};
pub use tag::TagCheck;

/// The frame header: type (2), flags (2), tag (4), length (4).
pub const HEADER_LEN: usize = 2 + 2 + 4 + 4;
/// Bit 15 of a frame type: set on every frame the server sends, so a frame sent the wrong
/// way is refused from its first two bytes.
pub const DIRECTION_BIT: u16 = 0x8000;
/// The largest payload of a control frame (every type except `DATA`): 64 KiB keeps the
/// buffer of a frame the receiver must hold whole small and bounded.
pub const MAX_CONTROL_PAYLOAD: u32 = 65_536;
/// The largest `DATA` payload, 1 MiB: the header is then 0.001 % of a full frame, and a
/// receiver can hold a whole frame in the server's large upload buffer (`LARGE_CHUNK`).
pub const MAX_DATA_PAYLOAD: u32 = 1_048_576;
/// The smallest `DATA` payload: an empty `DATA` would keep a put active at no cost.
pub const MIN_DATA_PAYLOAD: u32 = 1;
/// The tag of the connection itself (`HELLO`, `WELCOME`, an `ERROR` that closes).
pub const CONNECTION_TAG: u32 = 0;
/// The major version in `HELLO`.
pub const MAJOR_VERSION: u8 = 4;
/// The highest minor version this codec speaks.
pub const MINOR_VERSION: u8 = 0;

#[cfg(test)]
mod tests;
