//! The payloads of the first messages: `HELLO`, `WELCOME` and `ERROR` with its code table
//! (docs/protocol-v4.md, "HELLO and WELCOME" and "Errors"). Each decodes from exactly its
//! fields' bytes and encodes to the only bytes that decode to it; an encoder refuses a value
//! its decoder would refuse, so nothing is sent that the peer must call malformed.

use super::FrameError;
use super::reader::{Fields, put_str8, put_str16};
use crate::protocol::{CLIENT_ID_LEN, ClientId};
use std::fmt;

/// The longest software version text in `HELLO` and `WELCOME`.
pub const MAX_SOFTWARE_LEN: usize = 64;
/// The longest client name (protocol 3's name field without its NUL).
pub const MAX_CLIENT_NAME_LEN: usize = 254;
/// The longest `ERROR` message.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// `HELLO` without its string: major, minor.
pub const HELLO_FIXED_LEN: usize = 1 + 1;
/// `WELCOME` without its strings (their length prefixes counted with the strings).
pub const WELCOME_FIXED_LEN: usize = 1 + 1 + 1 + CLIENT_ID_LEN + 4 + 2 + 2 + 8 + 4 + 4 * 8 + 8;
/// `ERROR` without its message: code, kind, closes, unit, retry after, value, limit.
pub const ERROR_FIXED_LEN: usize = 2 + 1 + 1 + 1 + 4 + 8 + 8;

/// Defines a one-byte field's enum from one table of `Variant = number` rows: the enum,
/// its number and the conversion back that refuses numbers not in the table.
macro_rules! byte_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($field:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in numeric order.
            pub const ALL: [$name; [$($value),+].len()] = [$(Self::$variant),+];

            /// The byte on the wire.
            pub const fn as_u8(self) -> u8 {
                self as u8
            }

            fn read(fields: &mut Fields<'_>) -> Result<Self, FrameError> {
                match fields.u8()? {
                    $( $value => Ok(Self::$variant), )+
                    value => Err(FrameError::UnknownValue { field: $field, value }),
                }
            }
        }
    };
}

byte_enum! {
    /// The server's registration policy, as `WELCOME` announces it.
    pub enum Registration ("registration") {
        /// Any key may register.
        Open = 0,
        /// Registering needs an invitation token.
        Token = 1,
        /// Nobody may register.
        Closed = 2,
    }
}

byte_enum! {
    /// Whether retrying an `ERROR`'s request can help.
    pub enum ErrorKind ("kind") {
        /// The same request gets the same answer until someone changes something.
        Permanent = 0,
        /// The request may succeed later.
        Temporary = 1,
    }
}

byte_enum! {
    /// What an `ERROR`'s `value` and `limit` count.
    pub enum ErrorUnit ("unit") {
        /// Nothing: both are 0 or meaningless.
        Nothing = 0,
        /// Bytes.
        Bytes = 1,
        /// Files.
        Files = 2,
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Permanent => "permanent",
            ErrorKind::Temporary => "temporary",
        })
    }
}

/// Defines [`ErrorCode`] from one table of `Variant = number, "name", kind;` rows in
/// numeric order, with a compile-time check of the order and of the design's rule that
/// codes 1 to 19 are permanent and 20 and above temporary.
macro_rules! error_codes {
    ( $( $(#[$vmeta:meta])* $variant:ident = $value:literal, $name:literal, $kind:ident; )+ ) => {
        /// The reason in an `ERROR` frame. Numbers are never reused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: [ErrorCode; [$($value),+].len()] = [$(Self::$variant),+];

            /// The number on the wire.
            pub const fn as_u16(self) -> u16 {
                self as u16
            }

            /// The name the design uses.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $name, )+
                }
            }

            /// Whether a retry can help; it travels in the frame too.
            pub const fn kind(self) -> ErrorKind {
                match self {
                    $( Self::$variant => ErrorKind::$kind, )+
                }
            }
        }

        const _: () = {
            let rows = [$( ($value, matches!(ErrorKind::$kind, ErrorKind::Temporary)) ),+];
            let mut i = 0;
            while i < rows.len() {
                assert!(i == 0 || rows[i - 1].0 < rows[i].0, "error codes must be in numeric order");
                assert!((rows[i].0 >= 20) == rows[i].1, "codes from 20 are temporary, below permanent");
                i += 1;
            }
        };

        impl TryFrom<u16> for ErrorCode {
            type Error = FrameError;
            fn try_from(value: u16) -> Result<Self, Self::Error> {
                match value {
                    $( $value => Ok(Self::$variant), )+
                    _ => Err(FrameError::UnknownErrorCode(value)),
                }
            }
        }
    };
}

error_codes! {
    /// 1: a malformed frame, or one not allowed in this state.
    Protocol = 1, "protocol", Permanent;
    /// 2: a major or minor version the server does not serve.
    Version = 2, "version", Permanent;
    /// 3: the key is not a client here.
    NotRegistered = 3, "not_registered", Permanent;
    /// 4: registration closed, a bad token, or an upgrade proof refused.
    NotAuthorised = 4, "not_authorised", Permanent;
    /// 5: `REGISTER` with another client's name.
    NameTaken = 5, "name_taken", Permanent;
    /// 6: a path or client name breaks the rules.
    NameRefused = 6, "name_refused", Permanent;
    /// 7: no file at the path, or no upload held under the tag.
    NotFound = 7, "not_found", Permanent;
    /// 8: `GET`, or `RM` without `recursive`, of a folder.
    IsFolder = 8, "is_folder", Permanent;
    /// 9: a clash with what is stored or registered.
    Conflict = 9, "conflict", Permanent;
    /// 10: the size is above `--max-file-size`.
    TooLarge = 10, "too_large", Permanent;
    /// 11: the bytes or files quota.
    QuotaExceeded = 11, "quota_exceeded", Permanent;
    /// 12: a stored copy does not match its recorded hash.
    Corrupt = 12, "corrupt", Permanent;
    /// 20: the registration rate limit.
    RateLimited = 20, "rate_limited", Temporary;
    /// 21: open-put caps or `--max-uploads` reached.
    Busy = 21, "busy", Temporary;
    /// 22: the server's disk reserve is reached.
    DiskFull = 22, "disk_full", Temporary;
    /// 23: a deadline, the idle timeout or the minimum data rate.
    Timeout = 23, "timeout", Temporary;
    /// 24: the server is stopping.
    ShuttingDown = 24, "shutting_down", Temporary;
    /// 25: the server failed; its log has the details.
    Internal = 25, "internal", Temporary;
    /// 26: `COMMIT`'s hash is not the server's; the upload was thrown away.
    HashMismatch = 26, "hash_mismatch", Temporary;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_u16(), self.name())
    }
}

/// `HELLO`: the client's first frame, tag 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The major version (4); another is answered `ERROR version`, not refused as malformed.
    pub major: u8,
    /// The highest minor version the client speaks.
    pub minor: u8,
    /// The client's software and version, for logs only.
    pub software: String,
}

impl Hello {
    /// Decodes exactly the payload of a `HELLO`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let hello = Hello {
            major: f.u8()?,
            minor: f.u8()?,
            software: f.str8("software", MAX_SOFTWARE_LEN)?,
        };
        f.finish()?;
        Ok(hello)
    }

    /// The payload's bytes; refused if the software text breaks its rules.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = vec![self.major, self.minor];
        put_str8(&mut out, "software", &self.software, MAX_SOFTWARE_LEN)?;
        Ok(out)
    }
}

/// `WELCOME`: the server's answer to `HELLO`, with the connection's version and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The connection's minor version: the lower of the two sides'.
    pub minor: u8,
    /// The registration policy.
    pub registration: Registration,
    /// Whether the client's key is a client here.
    pub registered: bool,
    /// Its id, or zeros when not registered.
    pub client_id: ClientId,
    /// The largest `DATA` payload.
    pub max_data: u32,
    /// Unanswered requests the server reads ahead.
    pub max_in_flight: u16,
    /// Uploads this client may have open at once.
    pub max_open_puts: u16,
    /// `--max-file-size`.
    pub max_file_size: u64,
    /// Seconds an unfinished upload is kept.
    pub resume_window: u32,
    /// Bytes stored by the client.
    pub bytes_used: u64,
    /// Its bytes quota (`u64::MAX`: none).
    pub bytes_quota: u64,
    /// Files stored by the client.
    pub files_used: u64,
    /// Its files quota (`u64::MAX`: none).
    pub files_quota: u64,
    /// The server's clock, seconds since 1970-01-01 UTC.
    pub now: i64,
    /// The client's name, or empty.
    pub name: String,
    /// The server's software and version.
    pub software: String,
}

impl Welcome {
    /// Decodes exactly the payload of a `WELCOME`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let welcome = Welcome {
            minor: f.u8()?,
            registration: Registration::read(&mut f)?,
            registered: f.bool("registered")?,
            client_id: ClientId(*f.take::<CLIENT_ID_LEN>()?),
            max_data: f.u32()?,
            max_in_flight: f.u16()?,
            max_open_puts: f.u16()?,
            max_file_size: f.u64()?,
            resume_window: f.u32()?,
            bytes_used: f.u64()?,
            bytes_quota: f.u64()?,
            files_used: f.u64()?,
            files_quota: f.u64()?,
            now: f.i64()?,
            name: f.str8("name", MAX_CLIENT_NAME_LEN)?,
            software: f.str8("software", MAX_SOFTWARE_LEN)?,
        };
        f.finish()?;
        Ok(welcome)
    }

    /// The payload's bytes; refused if a text field breaks its rules.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out =
            Vec::with_capacity(WELCOME_FIXED_LEN + 2 + self.name.len() + self.software.len());
        out.extend_from_slice(&[self.minor, self.registration.as_u8(), u8::from(self.registered)]);
        out.extend_from_slice(&self.client_id.0);
        out.extend_from_slice(&self.max_data.to_le_bytes());
        out.extend_from_slice(&self.max_in_flight.to_le_bytes());
        out.extend_from_slice(&self.max_open_puts.to_le_bytes());
        out.extend_from_slice(&self.max_file_size.to_le_bytes());
        out.extend_from_slice(&self.resume_window.to_le_bytes());
        for count in [self.bytes_used, self.bytes_quota, self.files_used, self.files_quota] {
            out.extend_from_slice(&count.to_le_bytes());
        }
        out.extend_from_slice(&self.now.to_le_bytes());
        put_str8(&mut out, "name", &self.name, MAX_CLIENT_NAME_LEN)?;
        put_str8(&mut out, "software", &self.software, MAX_SOFTWARE_LEN)?;
        Ok(out)
    }
}

/// `ERROR`: a refusal with its reason. Its `kind` is the code's ([`ErrorCode::kind`]), so
/// it is not a field here; a frame whose kind disagrees with its code is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The reason.
    pub code: ErrorCode,
    /// The server closes the connection after this frame.
    pub closes: bool,
    /// What `value` and `limit` count.
    pub unit: ErrorUnit,
    /// Milliseconds to wait before retrying a temporary error, or 0.
    pub retry_after_ms: u32,
    /// E.g. the usage, or the declared size.
    pub value: u64,
    /// E.g. the quota, or the maximum size.
    pub limit: u64,
    /// Plain English for the user.
    pub message: String,
}

impl ErrorFrame {
    /// Decodes exactly the payload of an `ERROR`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let code = ErrorCode::try_from(f.u16()?)?;
        let kind = ErrorKind::read(&mut f)?;
        if kind != code.kind() {
            return Err(FrameError::KindMismatch { code, kind });
        }
        let error = ErrorFrame {
            code,
            closes: f.bool("closes")?,
            unit: ErrorUnit::read(&mut f)?,
            retry_after_ms: f.u32()?,
            value: f.u64()?,
            limit: f.u64()?,
            message: f.str16("message", MAX_ERROR_MESSAGE_LEN)?,
        };
        f.finish()?;
        Ok(error)
    }

    /// The payload's bytes; refused if the message breaks its rules.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(ERROR_FIXED_LEN + 2 + self.message.len());
        out.extend_from_slice(&self.code.as_u16().to_le_bytes());
        out.extend_from_slice(&[
            self.code.kind().as_u8(),
            u8::from(self.closes),
            self.unit.as_u8(),
        ]);
        out.extend_from_slice(&self.retry_after_ms.to_le_bytes());
        out.extend_from_slice(&self.value.to_le_bytes());
        out.extend_from_slice(&self.limit.to_le_bytes());
        put_str16(&mut out, "message", &self.message, MAX_ERROR_MESSAGE_LEN)?;
        Ok(out)
    }
}
