//! Why bytes could not be decoded. One flat enum: each reason is its own value so that
//! callers (and tests) can tell them apart, and every message says what to do.

use super::{RequestCode, ResponseCode};
use thiserror::Error;

/// A reason a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Not enough bytes yet: this is not an error on a stream, only on a finished buffer.
    #[error("message is incomplete: {needed} more bytes are needed")]
    Incomplete {
        /// How many more bytes at least.
        needed: usize,
    },
    /// A request code that protocol 3 does not have.
    #[error(
        "unknown request code {0}: protocol 3 has codes {first}-{last}",
        first = RequestCode::ALL[0].as_u16(),
        last = RequestCode::ALL[RequestCode::ALL.len() - 1].as_u16()
    )]
    UnknownRequestCode(u16),
    /// A response code that protocol 3 does not have.
    #[error(
        "unknown response code {0}: protocol 3 has codes {first}-{last}",
        first = ResponseCode::ALL[0].as_u16(),
        last = ResponseCode::ALL[ResponseCode::ALL.len() - 1].as_u16()
    )]
    UnknownResponseCode(u16),
    /// A fixed-size message whose payload size is not the one the code requires.
    #[error("request {code} must carry a payload of {expected} bytes, the header says {actual}")]
    WrongPayloadSize {
        /// The code.
        code: u16,
        /// The size the code requires.
        expected: u32,
        /// The size the header declared.
        actual: u32,
    },
    /// A payload larger than the receiver accepts.
    #[error("payload of {actual} bytes for code {code} is over the limit of {max} bytes")]
    PayloadTooLarge {
        /// The code.
        code: u16,
        /// The declared size.
        actual: u32,
        /// The limit.
        max: u32,
    },
    /// A 1028 whose payload size disagrees with its content size.
    #[error(
        "file request declares a payload of {payload_size} bytes but a content size of \
         {content_size}: the payload must be 259 + content size (or exactly 259)"
    )]
    FileSizeMismatch {
        /// The header's payload size.
        payload_size: u32,
        /// The content size field.
        content_size: u32,
    },
    /// Encrypted content whose size is zero or not a multiple of the AES block.
    #[error(
        "encrypted content of {0} bytes is impossible: AES-CBC with PKCS#7 gives a non-zero \
         multiple of 16"
    )]
    BadContentSize(u32),
    /// Encrypted content larger than the receiver's configured maximum.
    #[error("encrypted content of {actual} bytes is over this server's limit of {max} bytes")]
    ContentTooLarge {
        /// The declared size.
        actual: u32,
        /// The limit.
        max: u32,
    },
    /// A name field without its NUL terminator.
    #[error("the {field} field has no NUL terminator within its 255 bytes")]
    NameNotTerminated {
        /// Which field.
        field: &'static str,
    },
    /// A name field with a byte outside printable ASCII.
    #[error(
        "the {field} field has byte 0x{byte:02x} at position {position}: only printable \
         ASCII is allowed"
    )]
    NameNotPrintableAscii {
        /// Which field.
        field: &'static str,
        /// The byte.
        byte: u8,
        /// Its position.
        position: usize,
    },
    /// An empty name field.
    #[error("the {field} field is empty")]
    EmptyName {
        /// Which field.
        field: &'static str,
    },
    /// A response payload of the wrong size for its code.
    #[error("response {code} has a payload of {actual} bytes, expected {expected}")]
    BadResponsePayload {
        /// The code.
        code: u16,
        /// What was allowed, as text.
        expected: &'static str,
        /// The declared size.
        actual: u32,
    },
    /// Bytes after a complete message in a buffer that should hold exactly one.
    #[error("{0} unexpected bytes follow the message")]
    TrailingBytes(usize),
}
