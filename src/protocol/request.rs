//! Requests: the 23-byte header, the typed payloads, and the 1028 file header that can be
//! decoded on its own so that the encrypted content is streamed rather than buffered.

use super::reader::Reader;
use super::{
    AES_BLOCK_LEN, CLIENT_ID_LEN, CONTENT_SIZE_LEN, ClientId, DecodeError, FILE_HEADER_LEN,
    FixedName, NAME_LEN, PUBLIC_KEY_LEN, PublicKeyField, REQUEST_HEADER_LEN, RequestCode, Version,
};
use std::ops::Range;

/// The header every request starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// The sender's id (zero, or anything, in a 1025).
    pub client_id: ClientId,
    /// The client's version byte; any value is accepted.
    pub version: u8,
    /// What is asked.
    pub code: RequestCode,
    /// How many payload bytes the header announces.
    pub payload_size: u32,
}

impl RequestHeader {
    /// Decodes and validates a header before any payload is read: the code must be known and
    /// a fixed-size request must announce exactly its size, so nothing is allocated for a
    /// lying peer.
    pub fn decode(bytes: &[u8; REQUEST_HEADER_LEN]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let client_id = ClientId(*r.take::<CLIENT_ID_LEN>()?);
        let version = r.u8()?;
        let raw_code = r.u16_le()?;
        let code = RequestCode::try_from(raw_code)?;
        let payload_size = r.u32_le()?;
        let expected = code.fixed_payload_len();
        match expected {
            Some(expected) if payload_size != expected => {
                return Err(DecodeError::WrongPayloadSize {
                    code: raw_code,
                    expected,
                    actual: payload_size,
                });
            }
            None if payload_size < FILE_HEADER_LEN as u32 => {
                return Err(DecodeError::WrongPayloadSize {
                    code: raw_code,
                    expected: FILE_HEADER_LEN as u32,
                    actual: payload_size,
                });
            }
            _ => {}
        }
        Ok(RequestHeader { client_id, version, code, payload_size })
    }

    /// The header's 23 bytes.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[..CLIENT_ID_LEN].copy_from_slice(&self.client_id.0);
        out[CLIENT_ID_LEN] = self.version;
        out[CLIENT_ID_LEN + 1..CLIENT_ID_LEN + 3]
            .copy_from_slice(&self.code.as_u16().to_le_bytes());
        out[CLIENT_ID_LEN + 3..].copy_from_slice(&self.payload_size.to_le_bytes());
        out
    }
}

/// The fixed start of a 1028 payload: the encrypted content's size and the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// Size of the encrypted content that follows.
    pub content_size: u32,
    /// The file name as sent (may be a full path; see [`super::storage_name`]).
    pub file_name: FixedName,
}

impl FileHeader {
    /// Decodes the 259 bytes after a 1028 header.
    pub fn decode(bytes: &[u8; FILE_HEADER_LEN]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let content_size = r.u32_le()?;
        Ok(FileHeader { content_size, file_name: name_field(&mut r, "file name")? })
    }

    /// The 259 bytes.
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut out = [0u8; FILE_HEADER_LEN];
        out[..CONTENT_SIZE_LEN].copy_from_slice(&self.content_size.to_le_bytes());
        out[CONTENT_SIZE_LEN..].copy_from_slice(&self.file_name.encode());
        out
    }

    /// Checks the content size against the header's payload size and a limit, before any
    /// content is read. Two layouts are accepted: the spec's (payload = 259 + content) and
    /// the one existing clients send (payload exactly 259, content following it).
    pub fn check_sizes(&self, payload_size: u32, max_content: u32) -> Result<(), DecodeError> {
        let spec_layout =
            u64::from(payload_size) == FILE_HEADER_LEN as u64 + u64::from(self.content_size);
        let short_layout = payload_size == FILE_HEADER_LEN as u32 && self.content_size > 0;
        if !spec_layout && !short_layout {
            return Err(DecodeError::FileSizeMismatch {
                payload_size,
                content_size: self.content_size,
            });
        }
        if self.content_size == 0 || !self.content_size.is_multiple_of(AES_BLOCK_LEN as u32) {
            return Err(DecodeError::BadContentSize(self.content_size));
        }
        if self.content_size > max_content {
            return Err(DecodeError::ContentTooLarge {
                actual: self.content_size,
                max: max_content,
            });
        }
        Ok(())
    }
}

/// A request's meaning. For 1028 only the file header: the content is a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// 1025: register this name.
    Register {
        /// The requested client name.
        name: FixedName,
    },
    /// 1026: here is my public key.
    SendPublicKey {
        /// The client name.
        name: FixedName,
        /// SubjectPublicKeyInfo DER, zero padded.
        public_key: PublicKeyField,
    },
    /// 1027: I am back; give me a fresh AES key.
    Reconnect {
        /// The client name.
        name: FixedName,
    },
    /// 1028: an encrypted file follows.
    SendFile(FileHeader),
    /// 1029: the checksum matched.
    CrcOk {
        /// The file name as sent in the 1028.
        file_name: FixedName,
    },
    /// 1030: the checksum did not match; another 1028 follows.
    CrcRetry {
        /// The file name as sent in the 1028.
        file_name: FixedName,
    },
    /// 1031: the checksum did not match for the fourth time.
    CrcGiveUp {
        /// The file name as sent in the 1028.
        file_name: FixedName,
    },
}

impl Request {
    /// The request's code.
    pub fn code(&self) -> RequestCode {
        match self {
            Request::Register { .. } => RequestCode::Register,
            Request::SendPublicKey { .. } => RequestCode::SendPublicKey,
            Request::Reconnect { .. } => RequestCode::Reconnect,
            Request::SendFile(_) => RequestCode::SendFile,
            Request::CrcOk { .. } => RequestCode::CrcOk,
            Request::CrcRetry { .. } => RequestCode::CrcRetry,
            Request::CrcGiveUp { .. } => RequestCode::CrcGiveUp,
        }
    }

    /// Decodes a payload whose size the header already validated. For 1028, `payload` is
    /// the 259-byte file header only.
    pub fn decode_payload(code: RequestCode, payload: &[u8]) -> Result<Self, DecodeError> {
        let expected = code.fixed_payload_len().unwrap_or(FILE_HEADER_LEN as u32) as usize;
        if payload.len() != expected {
            return Err(DecodeError::WrongPayloadSize {
                code: code.as_u16(),
                expected: expected as u32,
                actual: payload.len() as u32,
            });
        }
        let mut r = Reader::new(payload);
        let r = &mut r;
        Ok(match code {
            RequestCode::Register => Request::Register { name: name_field(r, "name")? },
            RequestCode::SendPublicKey => Request::SendPublicKey {
                name: name_field(r, "name")?,
                public_key: PublicKeyField(*r.take::<PUBLIC_KEY_LEN>()?),
            },
            RequestCode::Reconnect => Request::Reconnect { name: name_field(r, "name")? },
            RequestCode::SendFile => Request::SendFile(FileHeader::decode(r.take()?)?),
            RequestCode::CrcOk => Request::CrcOk { file_name: name_field(r, "file name")? },
            RequestCode::CrcRetry => Request::CrcRetry { file_name: name_field(r, "file name")? },
            RequestCode::CrcGiveUp => Request::CrcGiveUp { file_name: name_field(r, "file name")? },
        })
    }

    /// The payload bytes (for 1028, the file header without the content).
    pub fn encode_payload(&self) -> Vec<u8> {
        match self {
            Request::Register { name } | Request::Reconnect { name } => name.encode().to_vec(),
            Request::SendPublicKey { name, public_key } => {
                let mut out = Vec::with_capacity(NAME_LEN + PUBLIC_KEY_LEN);
                out.extend_from_slice(&name.encode());
                out.extend_from_slice(&public_key.0);
                out
            }
            Request::SendFile(header) => header.encode().to_vec(),
            Request::CrcOk { file_name }
            | Request::CrcRetry { file_name }
            | Request::CrcGiveUp { file_name } => file_name.encode().to_vec(),
        }
    }

    /// The payload size the header announces: for 1028 it covers the content too (the
    /// spec's layout). Content within 259 bytes of 4 GiB cannot be announced that way, as
    /// the size field has 4 bytes; then the layout existing clients use is sent instead:
    /// exactly 259, with the content following (see [`FileHeader::check_sizes`]).
    pub fn payload_size(&self) -> u32 {
        match self {
            Request::SendFile(h) => (FILE_HEADER_LEN as u32)
                .checked_add(h.content_size)
                .unwrap_or(FILE_HEADER_LEN as u32),
            other => other.code().fixed_payload_len().expect("fixed size"),
        }
    }
}

/// Reads and decodes one 255-byte name field called `field`.
fn name_field(r: &mut Reader<'_>, field: &'static str) -> Result<FixedName, DecodeError> {
    FixedName::decode(r.take::<NAME_LEN>()?, field)
}

/// Encodes header and payload as securexfer sends them in `version` (spec layout). For
/// 1028 the caller writes the `content_size` bytes of content right after.
pub fn encode_request(version: Version, client_id: ClientId, request: &Request) -> Vec<u8> {
    let header = RequestHeader {
        client_id,
        version: version.byte(),
        code: request.code(),
        payload_size: request.payload_size(),
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&request.encode_payload());
    out
}

/// One request decoded from a buffer that holds it whole (captures, tests, fuzzing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRequest {
    /// The header as sent.
    pub header: RequestHeader,
    /// The request.
    pub request: Request,
    /// Where the encrypted content of a 1028 lies in the buffer (empty otherwise).
    pub content: Range<usize>,
    /// How many bytes of the buffer the request used.
    pub len: usize,
}

/// Decodes the first request in `buf`. [`DecodeError::Incomplete`] means more bytes are
/// needed; every other error means the bytes are invalid.
pub fn decode_request(buf: &[u8], max_content: u32) -> Result<DecodedRequest, DecodeError> {
    let mut r = Reader::new(buf);
    let header = RequestHeader::decode(r.take()?)?;
    let fixed_len = header.code.fixed_payload_len().unwrap_or(FILE_HEADER_LEN as u32) as usize;
    let request = Request::decode_payload(header.code, r.bytes(fixed_len)?)?;
    let payload_end = REQUEST_HEADER_LEN + fixed_len;
    let content = match &request {
        Request::SendFile(file) => {
            file.check_sizes(header.payload_size, max_content)?;
            payload_end..payload_end + file.content_size as usize
        }
        _ => payload_end..payload_end,
    };
    if buf.len() < content.end {
        return Err(DecodeError::Incomplete { needed: content.end - buf.len() });
    }
    Ok(DecodedRequest { len: content.end, header, request, content })
}
