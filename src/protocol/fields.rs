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

    /// A fresh random id (UUID v4 bytes: 122 random bits) that never starts 0x16 0x03.
    ///
    /// Requests open with the client id, and the server tells protocol 4 (TLS) from
    /// protocol 3 by the first bytes of a connection (see [`super::sniff`]): an id that
    /// starts like a TLS handshake record would make that client's requests look like TLS.
    /// Such ids (one in 65,536) are drawn again; 16 bits less choice in 1 in 65,536 ids
    /// costs nothing measurable of the id's 122 random bits.
    pub fn random() -> Self {
        Self::first_usable(|| *uuid::Uuid::new_v4().as_bytes())
    }

    /// The first candidate from `draw` that cannot be taken for the start of TLS.
    fn first_usable(mut draw: impl FnMut() -> [u8; CLIENT_ID_LEN]) -> Self {
        loop {
            let candidate = draw();
            if !super::sniff::could_open_tls(&candidate) {
                return ClientId(candidate);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sniff::{Sniff, classify};

    #[test]
    fn an_id_that_starts_like_tls_is_drawn_again() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut draws =
            [hello, [0x16, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0x16; 16]].into_iter();
        let id = ClientId::first_usable(|| draws.next().unwrap());
        assert_eq!(id, ClientId([0x16; 16]), "0x16 0x16 cannot open TLS: kept");
        assert_eq!(draws.next(), None, "both TLS-looking candidates were drawn and refused");
    }

    #[test]
    fn issued_ids_never_classify_as_tls() {
        for _ in 0..100_000 {
            let id = ClientId::random();
            assert!(!crate::protocol::sniff::could_open_tls(&id.0), "{id}");
            assert_eq!(classify(&id.0), Sniff::Protocol3, "{id}");
        }
    }
}
