//! Frames: the table of frame types, the 12-byte header validated before any payload is
//! touched, and whole frames cut out of a buffer.

use super::{
    DIRECTION_BIT, FrameError, HEADER_LEN, MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD, MIN_DATA_PAYLOAD,
};
use std::fmt;

/// One end of a connection: who sent a frame, or who is reading one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The side that opened the connection.
    Client,
    /// The securexfer server.
    Server,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Server => "server",
        })
    }
}

/// How long a type's payload may be, as the header alone can check it. A control frame's
/// exact length depends on its fields (strings), so the message decoders check that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadRule {
    /// A control frame with no fields: length 0.
    Empty,
    /// A control frame: 0 to [`MAX_CONTROL_PAYLOAD`] bytes.
    Control,
    /// File bytes: [`MIN_DATA_PAYLOAD`] to [`MAX_DATA_PAYLOAD`] bytes.
    Data,
}

impl PayloadRule {
    /// The smallest and largest payload length the rule allows.
    pub const fn bounds(self) -> (u32, u32) {
        match self {
            PayloadRule::Empty => (0, 0),
            PayloadRule::Control => (0, MAX_CONTROL_PAYLOAD),
            PayloadRule::Data => (MIN_DATA_PAYLOAD, MAX_DATA_PAYLOAD),
        }
    }
}

/// What a frame type is to the tag rules (see [`super::TagCheck`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// About the whole connection: tag 0 (`HELLO`).
    Connection,
    /// Opens a new request: its tag is greater than every tag the client used before.
    Request,
    /// Part of the body of the open put (`DATA`, `PUT_END`): the put's tag.
    PutBody,
    /// Names a held upload (`COMMIT`, `DISCARD`): the upload's tag, checked by the server
    /// against what it holds (a wrong one is `not_found`, not malformed).
    Held,
    /// Sent by the server: the tag of the request it answers, or 0.
    Answer,
}

/// Defines [`FrameType`] from one table of rows `Variant = number, "NAME", rule, role;` in
/// numeric order. The enum, `ALL`, the number, the name, the payload rule, the role,
/// `TryFrom<u16>` and `Display` are all made from it, and a compile-time check holds the
/// table to numeric order and to the direction bit (set exactly on the server's frames), so
/// a type added to the table is added everywhere and cannot be added anywhere else.
macro_rules! frame_types {
    ( $( $(#[$vmeta:meta])* $variant:ident = $value:literal, $name:literal, $rule:ident, $role:ident; )+ ) => {
        /// A frame type of protocol 4.0: the first field of every frame header.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum FrameType {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl FrameType {
            /// Every frame type, in numeric order.
            pub const ALL: [FrameType; [$($value),+].len()] = [$(Self::$variant),+];

            /// The number on the wire.
            pub const fn as_u16(self) -> u16 {
                self as u16
            }

            /// The name the design uses (both directions of `DATA` are `DATA`).
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $name, )+
                }
            }

            /// How long its payload may be.
            pub const fn payload_rule(self) -> PayloadRule {
                match self {
                    $( Self::$variant => PayloadRule::$rule, )+
                }
            }

            /// What it is to the tag rules.
            pub const fn role(self) -> Role {
                match self {
                    $( Self::$variant => Role::$role, )+
                }
            }
        }

        // Numeric order, and bit 15 set exactly on the server's frames (role `Answer`).
        const _: () = {
            let rows = [$( ($value, matches!(Role::$role, Role::Answer)) ),+];
            let mut i = 0;
            while i < rows.len() {
                assert!(i == 0 || rows[i - 1].0 < rows[i].0, "frame types must be in numeric order");
                assert!(
                    (rows[i].0 & DIRECTION_BIT != 0) == rows[i].1,
                    "bit 15 must be set exactly on the server's frame types"
                );
                i += 1;
            }
        };

        impl TryFrom<u16> for FrameType {
            type Error = FrameError;
            fn try_from(value: u16) -> Result<Self, FrameError> {
                match value {
                    $( $value => Ok(Self::$variant), )+
                    _ => Err(FrameError::UnknownType(value)),
                }
            }
        }
    };
}

frame_types! {
    /// `HELLO` (client): opens the conversation with the client's versions.
    Hello = 0x0001, "HELLO", Control, Connection;
    /// `DATA` (client): file bytes of the open put.
    PutData = 0x0010, "DATA", Data, PutBody;
    /// `REGISTER`: make this key a client.
    Register = 0x0101, "REGISTER", Control, Request;
    /// `UPGRADE`: attach this key to a protocol-3 record.
    Upgrade = 0x0102, "UPGRADE", Control, Request;
    /// `PUT_BEGIN`: open an upload.
    PutBegin = 0x0201, "PUT_BEGIN", Control, Request;
    /// `PUT_END`: the open put's data is complete.
    PutEnd = 0x0202, "PUT_END", Empty, PutBody;
    /// `COMMIT`: store a held upload.
    Commit = 0x0203, "COMMIT", Control, Held;
    /// `DISCARD`: throw a held upload away.
    Discard = 0x0204, "DISCARD", Empty, Held;
    /// `RESUME_QUERY`: how much of an unfinished upload the server holds.
    ResumeQuery = 0x0205, "RESUME_QUERY", Control, Request;
    /// `LIST`: list stored files.
    List = 0x0301, "LIST", Control, Request;
    /// `GET`: download a file.
    Get = 0x0302, "GET", Control, Request;
    /// `RM`: remove a file or folder.
    Rm = 0x0303, "RM", Control, Request;
    /// `WELCOME` (server): answers `HELLO`.
    Welcome = 0x8001, "WELCOME", Control, Answer;
    /// `ERROR` (server): a refusal, with its reason code.
    Error = 0x8002, "ERROR", Control, Answer;
    /// `DATA` (server): file bytes of the current `GET`.
    GetData = 0x8010, "DATA", Data, Answer;
    /// `REGISTERED`: answers `REGISTER` and `UPGRADE`.
    Registered = 0x8101, "REGISTERED", Control, Answer;
    /// `PUT_RECEIVED`: answers a put once all its data is in.
    PutReceived = 0x8201, "PUT_RECEIVED", Control, Answer;
    /// `COMMITTED`: answers `COMMIT`.
    Committed = 0x8203, "COMMITTED", Control, Answer;
    /// `DISCARDED`: answers `DISCARD`.
    Discarded = 0x8204, "DISCARDED", Empty, Answer;
    /// `RESUME_STATE`: answers `RESUME_QUERY`.
    ResumeState = 0x8205, "RESUME_STATE", Control, Answer;
    /// `LIST_ENTRIES`: part of a `LIST` answer.
    ListEntries = 0x8301, "LIST_ENTRIES", Control, Answer;
    /// `GET_BEGIN`: opens a `GET` answer.
    GetBegin = 0x8302, "GET_BEGIN", Control, Answer;
    /// `REMOVED`: answers `RM`.
    Removed = 0x8303, "REMOVED", Control, Answer;
    /// `LIST_END`: ends a `LIST` answer.
    ListEnd = 0x8381, "LIST_END", Control, Answer;
    /// `GET_END`: ends a `GET` answer.
    GetEnd = 0x8382, "GET_END", Control, Answer;
}

impl FrameType {
    /// Which side sends frames of this type (bit 15).
    pub const fn sender(self) -> Side {
        sender_of(self.as_u16())
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:04x})", self.name(), self.as_u16())
    }
}

const fn sender_of(raw_type: u16) -> Side {
    if raw_type & DIRECTION_BIT == 0 { Side::Client } else { Side::Server }
}

/// A validated frame header. Flags are always 0 in protocol 4.0, so they are not kept: a
/// header has one encoding. Built only by [`FrameHeader::new`] and
/// [`FrameHeader::decode`], so its length always fits its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    frame_type: FrameType,
    tag: u32,
    length: u32,
}

impl FrameHeader {
    /// A header for a frame the caller will send, refused if the length breaks the type's
    /// limit (so a sender cannot write a frame its peer must refuse).
    pub fn new(frame_type: FrameType, tag: u32, length: u32) -> Result<Self, FrameError> {
        let (min, max) = frame_type.payload_rule().bounds();
        if length < min || length > max {
            return Err(FrameError::BadLength { frame_type, length, min, max });
        }
        Ok(FrameHeader { frame_type, tag, length })
    }

    /// Decodes and validates the 12 header bytes before any payload is read: the direction
    /// bit must say the peer of `reader` sent it, the type must be known, the flags 0 and
    /// the length within the type's limit. Nothing is allocated for a lying peer.
    pub fn decode(bytes: &[u8; HEADER_LEN], reader: Side) -> Result<Self, FrameError> {
        let [t0, t1, f0, f1, g0, g1, g2, g3, l0, l1, l2, l3] = *bytes;
        let raw_type = u16::from_le_bytes([t0, t1]);
        if sender_of(raw_type) == reader {
            return Err(FrameError::WrongDirection { raw_type, reader });
        }
        let frame_type = FrameType::try_from(raw_type)?;
        let flags = u16::from_le_bytes([f0, f1]);
        if flags != 0 {
            return Err(FrameError::NonZeroFlags { frame_type, flags });
        }
        let tag = u32::from_le_bytes([g0, g1, g2, g3]);
        Self::new(frame_type, tag, u32::from_le_bytes([l0, l1, l2, l3]))
    }

    /// The header's 12 bytes (flags 0).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let [t0, t1] = self.frame_type.as_u16().to_le_bytes();
        let [g0, g1, g2, g3] = self.tag.to_le_bytes();
        let [l0, l1, l2, l3] = self.length.to_le_bytes();
        [t0, t1, 0, 0, g0, g1, g2, g3, l0, l1, l2, l3]
    }

    /// What the frame is.
    pub fn frame_type(&self) -> FrameType {
        self.frame_type
    }

    /// Which request it belongs to (0: the connection).
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// How many payload bytes follow the header (within the type's limit).
    pub fn length(&self) -> u32 {
        self.length
    }

    /// The whole frame's size: header and payload, at most 12 bytes + 1 MiB (securexfer
    /// builds for 32- and 64-bit targets, where that fits a `usize`).
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.length as usize
    }
}

/// Cuts the first frame out of `buf`, which `reader` received: its header, its payload and
/// how many bytes of `buf` it took. The header is validated as soon as its 12 bytes are
/// there, so an invalid one is refused without waiting for a payload; a valid frame not all
/// there yet is [`FrameError::Incomplete`] with how many bytes are missing.
pub fn decode_frame(buf: &[u8], reader: Side) -> Result<(FrameHeader, &[u8], usize), FrameError> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Incomplete { needed: HEADER_LEN - buf.len() });
    };
    let header = FrameHeader::decode(header_bytes, reader)?;
    let end = header.frame_len();
    match buf.get(HEADER_LEN..end) {
        Some(payload) => Ok((header, payload, end)),
        None => Err(FrameError::Incomplete { needed: end - buf.len() }),
    }
}

/// A whole frame, header and payload, ready to send; refused if the payload breaks the
/// type's limit.
pub fn encode_frame(
    frame_type: FrameType,
    tag: u32,
    payload: &[u8],
) -> Result<Vec<u8>, FrameError> {
    // A payload beyond 4 GiB is far over every limit; u32::MAX says so in the error.
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let header = FrameHeader::new(frame_type, tag, length)?;
    let mut out = Vec::with_capacity(header.frame_len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    Ok(out)
}
