//! The wire protocol (version 3) as typed values: codes, fixed-size fields, requests and
//! responses, and their exact byte encodings. No I/O lives here: the server and the client
//! read and write bytes, this module only says what they mean.
//!
//! See `docs/protocol-v3.md` in the repository for the spec and the variants of existing
//! implementations that are accepted here. Protocol 4's codec is in [`v4`].

mod codes;
mod error;
mod fields;
mod filename;
mod reader;
mod request;
mod response;
pub mod sniff;
pub mod v4;

pub use codes::{RequestCode, ResponseCode};
pub use error::DecodeError;
pub use fields::{ClientId, FixedName, PublicKeyField};
pub use filename::{FileNameError, TEMP_PREFIX, storage_name};
pub use request::{
    DecodedRequest, FileHeader, Request, RequestHeader, decode_request, encode_request,
};
pub use response::{Response, ResponseHeader, decode_response, decode_response_payload};
pub use version::Version;

/// The version byte protocol 3 writes ([`Version::V3`]). Peers may send anything; on the
/// plain TCP path it is never checked.
pub const VERSION: u8 = Version::V3.byte();
/// Length of a client id.
pub const CLIENT_ID_LEN: usize = 16;
/// Request header: client id (16), version (1), code (2), payload size (4).
pub const REQUEST_HEADER_LEN: usize = CLIENT_ID_LEN + 1 + 2 + 4;
/// Response header: version (1), code (2), payload size (4).
pub const RESPONSE_HEADER_LEN: usize = 1 + 2 + 4;
/// A name or file name field: ASCII text, a NUL terminator, zero padding.
pub const NAME_LEN: usize = 255;
/// The public key field: SubjectPublicKeyInfo DER, zero padded.
pub const PUBLIC_KEY_LEN: usize = 160;
/// The content size field at the start of a 1028 payload.
pub const CONTENT_SIZE_LEN: usize = 4;
/// The fixed part of a 1028 payload: content size and file name.
pub const FILE_HEADER_LEN: usize = CONTENT_SIZE_LEN + NAME_LEN;
/// A cksum value on the wire.
pub const CKSUM_LEN: usize = 4;
/// The AES-128 key length.
pub const AES_KEY_LEN: usize = 16;
/// The AES block length: content sizes are multiples of it.
pub const AES_BLOCK_LEN: usize = 16;
/// Payload of 2103: client id, content size, file name, cksum.
pub const FILE_RECEIVED_LEN: usize = CLIENT_ID_LEN + CONTENT_SIZE_LEN + NAME_LEN + CKSUM_LEN;
/// The largest response payload a client accepts (an encrypted AES key for RSA up to 4096
/// bits is 512 bytes; nothing in the protocol comes near this).
pub const MAX_RESPONSE_PAYLOAD: u32 = 4096;
/// The largest encrypted content the protocol can carry: the content size is 4 bytes and
/// the encrypted size is a multiple of the block size.
pub const MAX_CONTENT_SIZE: u32 = u32::MAX - (u32::MAX % AES_BLOCK_LEN as u32);
/// The largest plaintext file that fits: PKCS#7 always adds at least one byte.
pub const MAX_PLAINTEXT_SIZE: u64 = MAX_CONTENT_SIZE as u64 - 1;

/// The encrypted size of a plaintext of `len` bytes: `16 * (floor(len / 16) + 1)`.
pub fn encrypted_len(len: u64) -> u64 {
    AES_BLOCK_LEN as u64 * (len / AES_BLOCK_LEN as u64 + 1)
}

#[cfg(test)]
mod tests;
mod version;
