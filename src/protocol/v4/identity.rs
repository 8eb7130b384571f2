//! The payloads that make a key a client: `REGISTER`, `UPGRADE` and their answer
//! `REGISTERED` (docs/protocol-v4.md, "REGISTER and REGISTERED" and "Upgrade of a
//! protocol-3 client"), and the statement an upgrade signs.
//!
//! Names travel as UTF-8 of at most 255 bytes; their rules (NFC, no control characters,
//! 254 bytes) are [`super::names::check_client_name`], the receiver's, so that a breach is
//! `name_refused` and not a malformed frame.

use super::FrameError;
use super::reader::{Fields, put_name8};
use crate::protocol::{CLIENT_ID_LEN, ClientId};

/// The bytes of an invitation token.
pub const TOKEN_LEN: usize = 16;
/// The length of an upgrade signature: the size of protocol 3's RSA-1024 modulus.
pub const UPGRADE_SIGNATURE_LEN: usize = 128;
/// The label of the TLS exporter value an upgrade signature is bound to (RFC 8446, 7.5).
pub const UPGRADE_EXPORTER_LABEL: &[u8] = b"EXPORTER-securexfer-upgrade";
/// The context text that starts every upgrade statement, its zero byte included, so that
/// the signature means nothing in any other protocol.
pub const UPGRADE_CONTEXT: &[u8; 21] = b"securexfer/4 upgrade\0";
/// The longest name field the codec carries (a `str8`); the name rules allow 254.
const NAME_FIELD_MAX: usize = 255;

/// `REGISTER`: make the connection's key a new client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// The client name.
    pub name: String,
    /// An invitation token, for a server whose policy is `token`.
    pub token: Option<[u8; TOKEN_LEN]>,
}

impl Register {
    /// Decodes exactly the payload of a `REGISTER`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let name = f.name8("name", NAME_FIELD_MAX)?;
        let token = match f.bin8()? {
            [] => None,
            bytes => Some(<[u8; TOKEN_LEN]>::try_from(bytes).map_err(|_| {
                FrameError::BadBinLength { field: "token", len: bytes.len(), allowed: "0 or 16" }
            })?),
        };
        f.finish()?;
        Ok(Register { name, token })
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(2 + self.name.len() + TOKEN_LEN);
        put_name8(&mut out, "name", &self.name, NAME_FIELD_MAX)?;
        match &self.token {
            None => out.push(0),
            Some(token) => {
                out.push(TOKEN_LEN as u8);
                out.extend_from_slice(token);
            }
        }
        Ok(out)
    }
}

/// `REGISTERED`: the answer to `REGISTER` and `UPGRADE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The record's id.
    pub client_id: ClientId,
    /// The record's name.
    pub name: String,
}

impl Registered {
    /// Decodes exactly the payload of a `REGISTERED`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let client_id = ClientId(*f.take::<CLIENT_ID_LEN>()?);
        let name = f.name8("name", NAME_FIELD_MAX)?;
        f.finish()?;
        Ok(Registered { client_id, name })
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(CLIENT_ID_LEN + 1 + self.name.len());
        out.extend_from_slice(&self.client_id.0);
        put_name8(&mut out, "name", &self.name, NAME_FIELD_MAX)?;
        Ok(out)
    }
}

/// `UPGRADE`: attach the connection's key to a protocol-3 record, proven by a signature
/// with the record's RSA key over [`upgrade_statement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The protocol-3 id.
    pub client_id: ClientId,
    /// The protocol-3 name.
    pub name: String,
    /// RSASSA-PKCS1-v1_5 with SHA-256 over the statement: exactly 128 bytes.
    pub signature: Vec<u8>,
}

impl Upgrade {
    /// Decodes exactly the payload of an `UPGRADE`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(payload);
        let client_id = ClientId(*f.take::<CLIENT_ID_LEN>()?);
        let name = f.name8("name", NAME_FIELD_MAX)?;
        let signature = f.bin16()?;
        check_signature_len(signature.len())?;
        let signature = signature.to_vec();
        f.finish()?;
        Ok(Upgrade { client_id, name, signature })
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        check_signature_len(self.signature.len())?;
        let mut out = Vec::with_capacity(CLIENT_ID_LEN + 1 + self.name.len() + 2 + 128);
        out.extend_from_slice(&self.client_id.0);
        put_name8(&mut out, "name", &self.name, NAME_FIELD_MAX)?;
        out.extend_from_slice(&(self.signature.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.signature);
        Ok(out)
    }
}

fn check_signature_len(len: usize) -> Result<(), FrameError> {
    match len {
        UPGRADE_SIGNATURE_LEN => Ok(()),
        len => Err(FrameError::BadBinLength {
            field: "signature",
            len,
            allowed: "128 (the size of an RSA-1024 modulus)",
        }),
    }
}

/// The message an `UPGRADE` signs: the context text, the TLS exporter value of this
/// connection, the server key's fingerprint, the fingerprint of the key being attached,
/// the id and the name as sent (`str8`). Both sides build it from their own view of the
/// connection, so a signature relayed from another connection, made for another server,
/// key or record, does not verify. `None` when the name cannot be a `str8` (over 255
/// bytes), which no valid `UPGRADE` carries.
pub fn upgrade_statement(
    exporter: &[u8; 32],
    server_fp: &[u8; 32],
    client_fp: &[u8; 32],
    id: &ClientId,
    name: &str,
) -> Option<Vec<u8>> {
    let mut m = Vec::with_capacity(UPGRADE_CONTEXT.len() + 3 * 32 + CLIENT_ID_LEN + 1 + name.len());
    m.extend_from_slice(UPGRADE_CONTEXT);
    m.extend_from_slice(exporter);
    m.extend_from_slice(server_fp);
    m.extend_from_slice(client_fp);
    m.extend_from_slice(&id.0);
    put_name8(&mut m, "name", name, NAME_FIELD_MAX).ok()?;
    Some(m)
}
