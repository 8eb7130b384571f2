//! Checks shared by the fuzz targets in `fuzz/` and the corpus replay in
//! `tests/suite/fuzz_corpus.rs`: each takes arbitrary bytes and panics when an invariant breaks.
//!
//! - [`check_decode`]: the request and response codecs decode arbitrary bytes without
//!   panicking, and whatever decodes re-encodes to the same bytes (up to what the decoder
//!   deliberately ignores), and file names never map to an unsafe stored name.
//! - [`check_session`]: a script of requests, read from the bytes, runs against the real
//!   per-connection state machine; the script format and the invariants are described in
//!   `fuzz/harness/session.rs` and `fuzz/README.md`.
//! - [`check_v4_frames`]: protocol 4's frame codec reads arbitrary bytes as a stream of
//!   frames; what decodes re-encodes byte for byte, prefixes are incomplete, and a bad
//!   header is refused from its 12 bytes alone (`fuzz/harness/v4.rs`).
//! - [`check_v4_session`]: protocol 4's per-connection state machine reads arbitrary bytes
//!   as the client's frames, with a stand-in driver; frames are admitted only where the
//!   design allows them (`fuzz/harness/v4_session.rs`).
//!
//! It lives outside the library and uses only its public API (the protocol codecs and
//! [`securexfer::server::Server::serve_connection`]): the fuzz targets in `fuzz/` and
//! `tests/suite/fuzz_corpus.rs` both include this directory with `#[path]`, so that they run
//! exactly the same checks.

mod session;
mod v4;
mod v4_session;

pub use session::check_session;
pub use v4::check_v4_frames;
pub use v4_session::check_v4_session;

use securexfer::protocol::Version;
use securexfer::protocol::{
    CLIENT_ID_LEN, ClientId, DecodeError, FILE_HEADER_LEN, FileHeader, FixedName, NAME_LEN,
    REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN, Request, RequestHeader, Response, ResponseCode,
    ResponseHeader, TEMP_PREFIX, VERSION, decode_request, decode_response, encode_request,
    storage_name,
};

/// A content limit small enough that the fuzzer reaches it.
const SMALL_LIMIT: u32 = 64;

/// Runs every decoder over `data` and checks what decodes.
///
/// # Panics
/// When an invariant breaks (that is the point).
pub fn check_decode(data: &[u8]) {
    check_request(data);
    check_response(data);
    if let Some(bytes) = data.first_chunk::<REQUEST_HEADER_LEN>()
        && let Ok(header) = RequestHeader::decode(bytes)
    {
        assert_eq!(&header.encode(), bytes, "a request header re-encodes as it came");
    }
    // A file header alone, with the payload size that follows it, and where a 1028 has it.
    check_file_header(data.get(..FILE_HEADER_LEN), data.get(FILE_HEADER_LEN..FILE_HEADER_LEN + 4));
    let after_header = REQUEST_HEADER_LEN..REQUEST_HEADER_LEN + FILE_HEADER_LEN;
    check_file_header(data.get(after_header), data.get(REQUEST_HEADER_LEN - 4..REQUEST_HEADER_LEN));
    if let Some(bytes) = data.first_chunk::<RESPONSE_HEADER_LEN>()
        && let Ok(header) = ResponseHeader::decode(bytes)
    {
        assert_eq!(&header.encode(), bytes, "a response header re-encodes as it came");
    }
    check_storage_name(&String::from_utf8_lossy(data));
}

fn check_request(data: &[u8]) {
    let result = decode_request(data, u32::MAX);
    let _ = result.as_ref().map_err(ToString::to_string);
    let limited = decode_request(data, SMALL_LIMIT);
    if limited != result {
        // Only the content limit may tell the two apart, and only for a 1028.
        assert!(
            matches!(limited, Err(DecodeError::ContentTooLarge { .. })),
            "a lower content limit changed {result:?} into {limited:?}"
        );
    }
    match result {
        Ok(decoded) => {
            check_request_round_trip(data, &decoded);
            check_prefixes_are_incomplete(data, &decoded);
            check_storage_name(request_name(&decoded.request).as_str());
        }
        Err(DecodeError::Incomplete { needed }) => {
            assert!(needed > 0, "an incomplete request needs at least one more byte");
        }
        Err(_) => {}
    }
}

/// `encode_request` writes what was decoded, except what the decoder accepts but never
/// sends: any version byte (it sends 3), bytes after a name's NUL (it pads with zeros),
/// and the 259-byte payload size of the short 1028 layout (it states 259 + content size
/// whenever that fits in 32 bits).
fn check_request_round_trip(data: &[u8], decoded: &securexfer::protocol::DecodedRequest) {
    let header = &decoded.header;
    let encoded = encode_request(Version::V3, header.client_id, &decoded.request);
    assert_eq!(encoded.len(), decoded.content.start, "the head ends where the content starts");
    assert_eq!(decoded.content.end, decoded.len, "the content ends the request");
    assert!(decoded.len <= data.len(), "a request lies inside its buffer");

    let mut expected = data[..encoded.len()].to_vec();
    expected[CLIENT_ID_LEN] = VERSION;
    let name_at = match decoded.request {
        Request::SendFile(_) => REQUEST_HEADER_LEN + FILE_HEADER_LEN - NAME_LEN,
        _ => REQUEST_HEADER_LEN,
    };
    zero_after_nul(&mut expected[name_at..name_at + NAME_LEN]);
    if let Request::SendFile(file) = &decoded.request {
        // 259 + content size, or the short layout when that does not fit in 32 bits.
        let spec = u64::from(file.content_size) + FILE_HEADER_LEN as u64;
        let stated = u32::try_from(spec).unwrap_or(FILE_HEADER_LEN as u32);
        if header.payload_size != stated {
            let short = FILE_HEADER_LEN as u32;
            assert_eq!(header.payload_size, short, "only the short layout differs");
            expected[REQUEST_HEADER_LEN - 4..REQUEST_HEADER_LEN]
                .copy_from_slice(&stated.to_le_bytes());
        }
    }
    assert_eq!(encoded, expected, "re-encoding {:?}", decoded.request);

    let again = [&encoded[..], &data[decoded.content.clone()]].concat();
    let redecoded = decode_request(&again, u32::MAX).expect("a re-encoded request decodes");
    assert_eq!(redecoded.request, decoded.request);
    assert_eq!(redecoded.len, again.len());
}

/// Every prefix of a whole request is incomplete, and says exactly how far the next part
/// (header, payload, content) reaches. Checked at the boundaries, where mistakes live.
fn check_prefixes_are_incomplete(data: &[u8], decoded: &securexfer::protocol::DecodedRequest) {
    let (head, end) = (decoded.content.start, decoded.len);
    let cuts = [0, 1, REQUEST_HEADER_LEN - 1, REQUEST_HEADER_LEN, head - 1, head, end - 1];
    for cut in cuts.into_iter().filter(|&c| c < end) {
        let next =
            [REQUEST_HEADER_LEN, head, end].into_iter().find(|&b| b > cut).expect("end > cut");
        assert_eq!(
            decode_request(&data[..cut], u32::MAX),
            Err(DecodeError::Incomplete { needed: next - cut }),
            "a prefix of {cut} bytes of a {end}-byte request"
        );
    }
}

fn request_name(request: &Request) -> &FixedName {
    match request {
        Request::Register { name }
        | Request::Reconnect { name }
        | Request::SendPublicKey { name, .. } => name,
        Request::SendFile(file) => &file.file_name,
        Request::CrcOk { file_name }
        | Request::CrcRetry { file_name }
        | Request::CrcGiveUp { file_name } => file_name,
    }
}

fn zero_after_nul(field: &mut [u8]) {
    if let Some(nul) = field.iter().position(|&b| b == 0) {
        field[nul..].fill(0);
    }
}

fn check_file_header(bytes: Option<&[u8]>, payload_size: Option<&[u8]>) {
    let Some(bytes) = bytes.and_then(|b| <&[u8; FILE_HEADER_LEN]>::try_from(b).ok()) else {
        return;
    };
    let Ok(file) = FileHeader::decode(bytes) else {
        return;
    };
    let mut expected = *bytes;
    zero_after_nul(&mut expected[FILE_HEADER_LEN - NAME_LEN..]);
    assert_eq!(file.encode(), expected, "a file header re-encodes as it came");
    check_storage_name(file.file_name.as_str());
    // Whatever passes the size checks is a layout the spec allows, and encodes to one.
    let payload_size = payload_size
        .map_or(FILE_HEADER_LEN as u32, |b| u32::from_le_bytes(b.try_into().expect("4")));
    if file.check_sizes(payload_size, u32::MAX).is_err() {
        return;
    }
    let size = u64::from(file.content_size);
    assert!(size > 0 && size % 16 == 0, "content size {size} passed the checks");
    let spec = u64::from(payload_size) == FILE_HEADER_LEN as u64 + size;
    assert!(spec || payload_size == FILE_HEADER_LEN as u32, "payload {payload_size}");
    let encoded = encode_request(Version::V3, ClientId::ZERO, &Request::SendFile(file.clone()));
    let header = RequestHeader::decode(encoded[..REQUEST_HEADER_LEN].try_into().expect("23"))
        .expect("an encoded 1028 header decodes");
    file.check_sizes(header.payload_size, u32::MAX)
        .expect("the payload size encode_request states passes the size checks");
}

/// A stored name is one safe path component: never empty, `.`, `..`, never a separator, NUL
/// or control character, never a temporary file's name, and always the end of what was sent.
fn check_storage_name(sent: &str) {
    let Ok(stored) = storage_name(sent) else {
        return;
    };
    assert!(!stored.is_empty() && stored != "." && stored != "..", "{sent:?} -> {stored:?}");
    assert!(!stored.contains(['/', '\\', '\0']), "{sent:?} -> {stored:?}");
    assert!(!stored.chars().any(char::is_control), "{sent:?} -> {stored:?}");
    assert!(!stored.starts_with(TEMP_PREFIX), "{sent:?} -> {stored:?}");
    assert!(sent.ends_with(stored), "{sent:?} -> {stored:?}");
}

fn check_response(data: &[u8]) {
    let Ok((header, response, len)) = decode_response(data) else {
        return;
    };
    assert_eq!(len, RESPONSE_HEADER_LEN + header.payload_size as usize);
    let encoded = response.encode(Version::V3);
    let (again_header, again, again_len) = decode_response(&encoded).expect("re-encoded response");
    assert_eq!(again, response, "a response survives re-encoding");
    assert_eq!((again_header.version, again_len), (VERSION, encoded.len()));
    // Byte for byte, except the version and what the decoder ignores: the payload of
    // 2101 and 2107, and the bytes after a file name's NUL in 2103.
    let mut expected = data[..len].to_vec();
    expected[0] = VERSION;
    match response.code() {
        ResponseCode::RegistrationFailed | ResponseCode::GeneralError => {
            expected.truncate(RESPONSE_HEADER_LEN);
            expected[3..].fill(0);
        }
        ResponseCode::FileReceived => {
            let name_at = RESPONSE_HEADER_LEN + CLIENT_ID_LEN + 4;
            zero_after_nul(&mut expected[name_at..name_at + NAME_LEN]);
        }
        _ => {}
    }
    assert_eq!(encoded, expected, "re-encoding {response:?}");
    if let Response::FileReceived { file_name, .. } = &response {
        check_storage_name(file_name.as_str());
    }
}
