//! Fixed-size fields: the client id, the 255-byte NUL-terminated names and the 160-byte
//! public key.

use super::{CLIENT_ID_LEN, DecodeError, NAME_LEN, PUBLIC_KEY_LEN};
use std::fmt;

/// A 128-bit client id. It travels in clear, so it identifies but never authenticates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ClientId(pub [u8; CLIENT_ID_LEN]);

impl ClientId {
    /// The all-zero id that clients send before they have one.
    pub const ZERO: ClientId = ClientId([0; CLIENT_ID_LEN]);

    /// A fresh random id (UUID v4 bytes: 122 random bits).
    pub fn random() -> Self {
        ClientId(*uuid::Uuid::new_v4().as_bytes())
    }

    /// 32 lowercase hex digits, as `me.info` and the storage directory use.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 32 hex digits or a dashed UUID (both occur in existing `me.info` files).
    pub fn parse(text: &str) -> Option<Self> {
        uuid::Uuid::try_parse(text.trim()).ok().map(|u| ClientId(*u.as_bytes()))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.to_hex())
    }
}

/// Text for a 255-byte name field: 1 to 254 bytes of printable ASCII. Holding one proves
/// it encodes; the constructor is the only way in.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct FixedName(String);

impl FixedName {
    /// The longest text that fits with its terminator.
    pub const MAX_LEN: usize = NAME_LEN - 1;

    /// Validates `text` for a field called `field` (used in the error).
    pub fn new(text: &str, field: &'static str) -> Result<Self, DecodeError> {
        if text.is_empty() {
            return Err(DecodeError::EmptyName { field });
        }
        if text.len() > Self::MAX_LEN {
            return Err(DecodeError::NameNotTerminated { field });
        }
        check_printable(text.as_bytes(), field)?;
        Ok(FixedName(text.to_owned()))
    }

    /// Decodes a field: text up to the first NUL. Bytes after the NUL are padding and are
    /// not looked at (some C++ clients leave stack bytes there; the text is unambiguous).
    pub fn decode(field_bytes: &[u8; NAME_LEN], field: &'static str) -> Result<Self, DecodeError> {
        let end = field_bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::NameNotTerminated { field })?;
        let text = &field_bytes[..end];
        if text.is_empty() {
            return Err(DecodeError::EmptyName { field });
        }
        check_printable(text, field)?;
        // Printable ASCII is valid UTF-8.
        Ok(FixedName(String::from_utf8_lossy(text).into_owned()))
    }

    /// The field's 255 bytes: text, NUL, zero padding.
    pub fn encode(&self) -> [u8; NAME_LEN] {
        let mut out = [0u8; NAME_LEN];
        out[..self.0.len()].copy_from_slice(self.0.as_bytes());
        out
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FixedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_printable(text: &[u8], field: &'static str) -> Result<(), DecodeError> {
    match text.iter().position(|b| !(0x20..0x7f).contains(b)) {
        Some(position) => {
            Err(DecodeError::NameNotPrintableAscii { field, byte: text[position], position })
        }
        None => Ok(()),
    }
}

/// The 160-byte public key field, kept as bytes: whether it holds a usable key is the
/// crypto module's question, not the codec's.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKeyField(pub [u8; PUBLIC_KEY_LEN]);

impl fmt::Debug for PublicKeyField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKeyField({} bytes)", PUBLIC_KEY_LEN)
    }
}
