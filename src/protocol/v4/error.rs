//! Why a protocol-4 frame or payload was refused. One flat enum, as for protocol 3: each
//! reason is its own value so callers and tests can tell them apart. Every reason but
//! [`FrameError::Incomplete`] is malformed input, which the server answers `ERROR
//! protocol` and closes (docs/protocol-v4.md, "State machine").

use super::{ErrorCode, ErrorKind, FrameType, Side};
use thiserror::Error;

/// A reason a frame, its header or its payload could not be decoded (or encoded).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Not enough bytes yet: not an error on a stream, only on a finished buffer.
    #[error("frame is incomplete: {needed} more bytes are needed")]
    Incomplete {
        /// How many more bytes at least.
        needed: usize,
    },
    /// A frame whose direction bit says it was sent by the side reading it.
    #[error(
        "frame type 0x{raw_type:04x} is one the {reader} sends, but the {reader} is reading \
         it: bit 15 of the type is set exactly on the server's frames"
    )]
    WrongDirection {
        /// The type number as received.
        raw_type: u16,
        /// The side that read it.
        reader: Side,
    },
    /// A frame type protocol 4.0 does not have.
    #[error("unknown frame type 0x{0:04x}: protocol 4.0 has no such frame")]
    UnknownType(u16),
    /// Flags other than 0 (protocol 4.0 defines none).
    #[error("frame {frame_type} has flags 0x{flags:04x}: protocol 4.0 requires 0")]
    NonZeroFlags {
        /// The frame's type.
        frame_type: FrameType,
        /// The flags as received.
        flags: u16,
    },
    /// A payload length outside the type's limit, refused from the header alone.
    #[error("frame {frame_type} announces {length} payload bytes; it must carry {min} to {max}")]
    BadLength {
        /// The frame's type.
        frame_type: FrameType,
        /// The announced length.
        length: u32,
        /// The smallest length the type allows.
        min: u32,
        /// The largest length the type allows.
        max: u32,
    },
    /// A connection frame (`HELLO`) with a tag other than 0.
    #[error("frame {frame_type} carries tag {tag}: it belongs to the connection, tag 0")]
    TagNotZero {
        /// The frame's type.
        frame_type: FrameType,
        /// The tag it carried.
        tag: u32,
    },
    /// A new request whose tag is not above every tag the client used before.
    #[error(
        "request {frame_type} carries tag {tag}, but the client already used tag {last}: \
         each new request's tag must be greater than every earlier one"
    )]
    TagNotIncreasing {
        /// The request's type.
        frame_type: FrameType,
        /// The tag it carried.
        tag: u32,
        /// The highest tag before it.
        last: u32,
    },
    /// A put body frame (`DATA`, `PUT_END`) that does not carry the open put's tag.
    #[error(
        "frame {frame_type} carries tag {tag}, but {}",
        match open_put {
            Some(open) => format!("the open put has tag {open}"),
            None => "no put is open".to_owned(),
        }
    )]
    TagNotOpenPut {
        /// The frame's type.
        frame_type: FrameType,
        /// The tag it carried.
        tag: u32,
        /// The open put's tag, if a put is open.
        open_put: Option<u32>,
    },
    /// A payload shorter than its fields.
    #[error("payload is {needed} bytes shorter than its fields")]
    ShortPayload {
        /// How many bytes are missing.
        needed: usize,
    },
    /// Bytes after a payload's last field.
    #[error("{0} bytes follow the payload's last field: a payload has exactly its fields' length")]
    TrailingBytes(usize),
    /// A boolean other than 0 or 1.
    #[error("the {field} field is {byte}: a boolean is 0 or 1")]
    NotBool {
        /// Which field.
        field: &'static str,
        /// The byte.
        byte: u8,
    },
    /// A one-byte field whose value its table does not have.
    #[error("the {field} field is {value}, which protocol 4.0 does not define")]
    UnknownValue {
        /// Which field.
        field: &'static str,
        /// The value.
        value: u8,
    },
    /// An `ERROR` code protocol 4.0 does not have.
    #[error("unknown error code {0}: protocol 4.0 does not define it")]
    UnknownErrorCode(u16),
    /// An `ERROR` whose `kind` is not the one its code has.
    #[error("error code {code} is {}, but the frame says {kind}", code.kind())]
    KindMismatch {
        /// The code.
        code: ErrorCode,
        /// The kind the frame carried.
        kind: ErrorKind,
    },
    /// A text field that is not UTF-8.
    #[error("the {field} field is not valid UTF-8")]
    TextNotUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// A text field with a control character.
    #[error("the {field} field has a control character at byte {position}")]
    TextControl {
        /// Which field.
        field: &'static str,
        /// The byte offset of the character.
        position: usize,
    },
    /// A binary field whose length is not one its field allows.
    #[error("the {field} field is {len} bytes long; it must be {allowed}")]
    BadBinLength {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The lengths allowed, in words.
        allowed: &'static str,
    },
    /// Bits set in an options field that protocol 4.0 does not define.
    #[error("the {field} field has bits 0x{bits:02x} set that protocol 4.0 does not define")]
    ReservedBits {
        /// Which field.
        field: &'static str,
        /// The undefined bits that were set.
        bits: u8,
    },
    /// Fields of one message that contradict each other (e.g. an offset past the size).
    #[error("{0}")]
    Inconsistent(&'static str),
    /// A text field longer than its limit.
    #[error("the {field} field is {len} bytes long; at most {max} are allowed")]
    TextTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}
