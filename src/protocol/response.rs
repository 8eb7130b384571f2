//! Responses: the 7-byte header and the typed payloads.

use super::reader::Reader;
use super::{
    CLIENT_ID_LEN, ClientId, DecodeError, FILE_RECEIVED_LEN, FixedName, MAX_RESPONSE_PAYLOAD,
    NAME_LEN, RESPONSE_HEADER_LEN, ResponseCode, Version,
};

/// The header every response starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The server's version byte; any value is accepted.
    pub version: u8,
    /// The answer.
    pub code: ResponseCode,
    /// How many payload bytes follow.
    pub payload_size: u32,
}

impl ResponseHeader {
    /// Decodes a header and refuses a payload size no valid response has, before the
    /// payload is read.
    pub fn decode(bytes: &[u8; RESPONSE_HEADER_LEN]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        let raw_code = r.u16_le()?;
        let code = ResponseCode::try_from(raw_code)?;
        let payload_size = r.u32_le()?;
        if payload_size > MAX_RESPONSE_PAYLOAD {
            return Err(DecodeError::PayloadTooLarge {
                code: raw_code,
                actual: payload_size,
                max: MAX_RESPONSE_PAYLOAD,
            });
        }
        Ok(ResponseHeader { version, code, payload_size })
    }

    /// The header's 7 bytes.
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut out = [0u8; RESPONSE_HEADER_LEN];
        out[0] = self.version;
        out[1..3].copy_from_slice(&self.code.as_u16().to_le_bytes());
        out[3..].copy_from_slice(&self.payload_size.to_le_bytes());
        out
    }
}

/// A response's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// 2100: registered under this id.
    Registered {
        /// The new id.
        client_id: ClientId,
    },
    /// 2101: registration failed (name taken).
    RegistrationFailed,
    /// 2102: the AES key, encrypted with the public key just sent.
    PublicKeyAccepted {
        /// The client's id.
        client_id: ClientId,
        /// RSA-OAEP ciphertext of the AES key.
        encrypted_key: Vec<u8>,
    },
    /// 2103: the file arrived; this is its cksum.
    FileReceived {
        /// The client's id.
        client_id: ClientId,
        /// The encrypted content size received.
        content_size: u32,
        /// The file name as the client sent it.
        file_name: FixedName,
        /// POSIX cksum of the decrypted content.
        cksum: u32,
    },
    /// 2104: acknowledged. Some servers leave out the id.
    Acknowledged {
        /// The client's id, when the server sent it.
        client_id: Option<ClientId>,
    },
    /// 2105: reconnected; a fresh AES key, encrypted with the stored public key.
    ReconnectAccepted {
        /// The client's id.
        client_id: ClientId,
        /// RSA-OAEP ciphertext of the AES key.
        encrypted_key: Vec<u8>,
    },
    /// 2106: reconnect denied; register again. Some servers leave out the id.
    ReconnectDenied {
        /// The client's id, when the server sent it.
        client_id: Option<ClientId>,
    },
    /// 2107: the server could not handle the request.
    GeneralError,
}

impl Response {
    /// The response's code.
    pub fn code(&self) -> ResponseCode {
        match self {
            Response::Registered { .. } => ResponseCode::Registered,
            Response::RegistrationFailed => ResponseCode::RegistrationFailed,
            Response::PublicKeyAccepted { .. } => ResponseCode::PublicKeyAccepted,
            Response::FileReceived { .. } => ResponseCode::FileReceived,
            Response::Acknowledged { .. } => ResponseCode::Acknowledged,
            Response::ReconnectAccepted { .. } => ResponseCode::ReconnectAccepted,
            Response::ReconnectDenied { .. } => ResponseCode::ReconnectDenied,
            Response::GeneralError => ResponseCode::GeneralError,
        }
    }

    fn payload(&self) -> Vec<u8> {
        let id_and = |id: &ClientId, rest: &[u8]| [&id.0[..], rest].concat();
        match self {
            Response::Registered { client_id } => client_id.0.to_vec(),
            Response::RegistrationFailed | Response::GeneralError => Vec::new(),
            Response::PublicKeyAccepted { client_id, encrypted_key }
            | Response::ReconnectAccepted { client_id, encrypted_key } => {
                id_and(client_id, encrypted_key)
            }
            Response::FileReceived { client_id, content_size, file_name, cksum } => {
                let mut out = Vec::with_capacity(FILE_RECEIVED_LEN);
                out.extend_from_slice(&client_id.0);
                out.extend_from_slice(&content_size.to_le_bytes());
                out.extend_from_slice(&file_name.encode());
                out.extend_from_slice(&cksum.to_le_bytes());
                out
            }
            Response::Acknowledged { client_id } | Response::ReconnectDenied { client_id } => {
                client_id.map(|id| id.0.to_vec()).unwrap_or_default()
            }
        }
    }

    /// Header and payload as securexfer sends them in `version`.
    pub fn encode(&self, version: Version) -> Vec<u8> {
        let payload = self.payload();
        let header = ResponseHeader {
            version: version.byte(),
            code: self.code(),
            payload_size: payload.len() as u32,
        };
        [&header.encode()[..], &payload].concat()
    }
}

/// Decodes a payload that the header announced and that has been read in full.
pub fn decode_response_payload(
    header: &ResponseHeader,
    payload: &[u8],
) -> Result<Response, DecodeError> {
    let code = header.code;
    let bad = |expected| DecodeError::BadResponsePayload {
        code: code.as_u16(),
        expected,
        actual: payload.len() as u32,
    };
    let mut r = Reader::new(payload);
    let r = &mut r;
    let id = |r: &mut Reader<'_>| r.take::<CLIENT_ID_LEN>().map(|id| ClientId(*id));
    let optional_id = |r: &mut Reader<'_>| match r.remaining() {
        0 => Ok(None),
        CLIENT_ID_LEN => id(r).map(Some),
        _ => Err(bad("0 or 16")),
    };
    Ok(match code {
        ResponseCode::Registered if payload.len() == CLIENT_ID_LEN => {
            Response::Registered { client_id: id(r)? }
        }
        ResponseCode::Registered => return Err(bad("16")),
        // Their payloads carry nothing; a server that sends some anyway is still clear.
        ResponseCode::RegistrationFailed => Response::RegistrationFailed,
        ResponseCode::GeneralError => Response::GeneralError,
        ResponseCode::PublicKeyAccepted | ResponseCode::ReconnectAccepted => {
            if payload.len() <= CLIENT_ID_LEN {
                return Err(bad("16 + encrypted key"));
            }
            let client_id = id(r)?;
            let encrypted_key = r.rest().to_vec();
            if code == ResponseCode::PublicKeyAccepted {
                Response::PublicKeyAccepted { client_id, encrypted_key }
            } else {
                Response::ReconnectAccepted { client_id, encrypted_key }
            }
        }
        ResponseCode::FileReceived if payload.len() == FILE_RECEIVED_LEN => {
            Response::FileReceived {
                client_id: id(r)?,
                content_size: r.u32_le()?,
                file_name: FixedName::decode(r.take::<NAME_LEN>()?, "file name")?,
                cksum: r.u32_le()?,
            }
        }
        ResponseCode::FileReceived => return Err(bad("279")),
        ResponseCode::Acknowledged => Response::Acknowledged { client_id: optional_id(r)? },
        ResponseCode::ReconnectDenied => Response::ReconnectDenied { client_id: optional_id(r)? },
    })
}

/// Decodes the first response in `buf`; returns it with its header and length.
pub fn decode_response(buf: &[u8]) -> Result<(ResponseHeader, Response, usize), DecodeError> {
    let mut r = Reader::new(buf);
    let header = ResponseHeader::decode(r.take::<RESPONSE_HEADER_LEN>()?)?;
    let payload = r.bytes(header.payload_size as usize)?;
    let response = decode_response_payload(&header, payload)?;
    Ok((header, response, RESPONSE_HEADER_LEN + payload.len()))
}
