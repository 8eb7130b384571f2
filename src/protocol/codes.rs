//! Request and response codes. An unknown number fails to convert and keeps its value.

use super::DecodeError;

/// A request code (client to server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RequestCode {
    /// 1025: register a new client name.
    Register = 1025,
    /// 1026: send the public key; the server answers with an AES key.
    SendPublicKey = 1026,
    /// 1027: reconnect with a known name; the server answers with a fresh AES key.
    Reconnect = 1027,
    /// 1028: send an encrypted file.
    SendFile = 1028,
    /// 1029: the checksum matched.
    CrcOk = 1029,
    /// 1030: the checksum did not match; a new 1028 follows (no answer).
    CrcRetry = 1030,
    /// 1031: the checksum did not match for the fourth time; giving up.
    CrcGiveUp = 1031,
}

impl RequestCode {
    /// Every request code, in numeric order.
    pub const ALL: [RequestCode; 7] = [
        Self::Register,
        Self::SendPublicKey,
        Self::Reconnect,
        Self::SendFile,
        Self::CrcOk,
        Self::CrcRetry,
        Self::CrcGiveUp,
    ];

    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The payload size this code must carry, or `None` for 1028 (variable).
    pub fn fixed_payload_len(self) -> Option<u32> {
        use super::{NAME_LEN, PUBLIC_KEY_LEN};
        match self {
            Self::SendPublicKey => Some((NAME_LEN + PUBLIC_KEY_LEN) as u32),
            Self::SendFile => None,
            _ => Some(NAME_LEN as u32),
        }
    }
}

impl TryFrom<u16> for RequestCode {
    type Error = DecodeError;
    fn try_from(value: u16) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_u16() == value)
            .ok_or(DecodeError::UnknownRequestCode(value))
    }
}

/// A response code (server to client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ResponseCode {
    /// 2100: registered; here is the new client id.
    Registered = 2100,
    /// 2101: registration failed (the name is taken).
    RegistrationFailed = 2101,
    /// 2102: public key received; here is the AES key, encrypted with it.
    PublicKeyAccepted = 2102,
    /// 2103: file received; here is the cksum of what arrived.
    FileReceived = 2103,
    /// 2104: acknowledged (answer to 1029 and 1031).
    Acknowledged = 2104,
    /// 2105: reconnect accepted; here is a fresh AES key.
    ReconnectAccepted = 2105,
    /// 2106: reconnect denied; register again.
    ReconnectDenied = 2106,
    /// 2107: the server could not handle the request.
    GeneralError = 2107,
}

impl ResponseCode {
    /// Every response code, in numeric order.
    pub const ALL: [ResponseCode; 8] = [
        Self::Registered,
        Self::RegistrationFailed,
        Self::PublicKeyAccepted,
        Self::FileReceived,
        Self::Acknowledged,
        Self::ReconnectAccepted,
        Self::ReconnectDenied,
        Self::GeneralError,
    ];

    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

impl TryFrom<u16> for ResponseCode {
    type Error = DecodeError;
    fn try_from(value: u16) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_u16() == value)
            .ok_or(DecodeError::UnknownResponseCode(value))
    }
}

impl std::fmt::Display for RequestCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.as_u16(), self)
    }
}

impl std::fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.as_u16(), self)
    }
}
