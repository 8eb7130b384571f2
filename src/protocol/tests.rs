//! Tests of the codec: round trips of every message, hostile and malformed input (which must
//! give a typed error, never a panic), each distinct decode error, and `storage_name`.

use super::filename::TEMP_PREFIX;
use super::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Helpers

/// No limit on the content size beyond what the wire can carry.
const NO_LIMIT: u32 = u32::MAX;

fn name(text: &str) -> FixedName {
    FixedName::new(text, "name").expect("valid test name")
}

/// A request header with arbitrary fields, as raw bytes (to build invalid requests).
fn raw_request_header(id: [u8; 16], version: u8, code: u16, payload_size: u32) -> Vec<u8> {
    let mut out = id.to_vec();
    out.push(version);
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&payload_size.to_le_bytes());
    out
}

/// A raw name field: `text`, then zeros to 255 bytes (no terminator if `text` fills it).
fn raw_name(text: &[u8]) -> [u8; NAME_LEN] {
    let mut field = [0u8; NAME_LEN];
    field[..text.len()].copy_from_slice(text);
    field
}

/// A raw 1028: header with `payload_size`, content size field, name, then `content`.
fn raw_send_file(
    payload_size: u32,
    content_size: u32,
    file_name: &[u8],
    content: &[u8],
) -> Vec<u8> {
    let mut out = raw_request_header([7; 16], VERSION, 1028, payload_size);
    out.extend_from_slice(&content_size.to_le_bytes());
    out.extend_from_slice(&raw_name(file_name));
    out.extend_from_slice(content);
    out
}

/// A raw response: header then `payload`.
fn raw_response(version: u8, code: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![version];
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn request_header_array(bytes: &[u8]) -> [u8; REQUEST_HEADER_LEN] {
    bytes[..REQUEST_HEADER_LEN].try_into().expect("23 bytes")
}

// ---------------------------------------------------------------------------------------
// Strategies

fn arb_name() -> impl Strategy<Value = FixedName> {
    "[ -~]{1,254}".prop_map(|s| FixedName::new(&s, "name").expect("printable ASCII, 1..=254"))
}

fn arb_client_id() -> impl Strategy<Value = ClientId> {
    any::<[u8; CLIENT_ID_LEN]>().prop_map(ClientId)
}

fn arb_public_key() -> impl Strategy<Value = PublicKeyField> {
    prop::collection::vec(any::<u8>(), PUBLIC_KEY_LEN)
        .prop_map(|v| PublicKeyField(v.try_into().expect("160 bytes")))
}

/// Encrypted content: a non-zero multiple of the block size (kept small).
fn arb_content() -> impl Strategy<Value = Vec<u8>> {
    (1usize..=64).prop_flat_map(|blocks| prop::collection::vec(any::<u8>(), blocks * AES_BLOCK_LEN))
}

/// A request and the content that follows it (empty except for 1028).
fn arb_request() -> impl Strategy<Value = (Request, Vec<u8>)> {
    let plain = |r: Request| (r, Vec::new());
    prop_oneof![
        arb_name().prop_map(move |name| plain(Request::Register { name })),
        (arb_name(), arb_public_key())
            .prop_map(move |(name, public_key)| plain(Request::SendPublicKey { name, public_key })),
        arb_name().prop_map(move |name| plain(Request::Reconnect { name })),
        (arb_name(), arb_content()).prop_map(|(file_name, content)| {
            let header = FileHeader { content_size: content.len() as u32, file_name };
            (Request::SendFile(header), content)
        }),
        arb_name().prop_map(move |file_name| plain(Request::CrcOk { file_name })),
        arb_name().prop_map(move |file_name| plain(Request::CrcRetry { file_name })),
        arb_name().prop_map(move |file_name| plain(Request::CrcGiveUp { file_name })),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    let key = || prop::collection::vec(any::<u8>(), 1..=512);
    prop_oneof![
        arb_client_id().prop_map(|client_id| Response::Registered { client_id }),
        Just(Response::RegistrationFailed),
        (arb_client_id(), key()).prop_map(|(client_id, encrypted_key)| {
            Response::PublicKeyAccepted { client_id, encrypted_key }
        }),
        (arb_client_id(), any::<u32>(), arb_name(), any::<u32>()).prop_map(
            |(client_id, content_size, file_name, cksum)| Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum,
            }
        ),
        prop::option::of(arb_client_id())
            .prop_map(|client_id| Response::Acknowledged { client_id }),
        (arb_client_id(), key()).prop_map(|(client_id, encrypted_key)| {
            Response::ReconnectAccepted { client_id, encrypted_key }
        }),
        prop::option::of(arb_client_id())
            .prop_map(|client_id| Response::ReconnectDenied { client_id }),
        Just(Response::GeneralError),
    ]
}

/// A valid request's full bytes (header, payload, content).
fn encoded_request(id: ClientId, request: &Request, content: &[u8]) -> Vec<u8> {
    let mut bytes = encode_request(Version::V3, id, request);
    bytes.extend_from_slice(content);
    bytes
}

/// How to damage a valid message.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR the byte at (index mod len) with a non-zero mask.
    Flip(usize, u8),
    /// Keep only the first (n mod len) bytes.
    Truncate(usize),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Overwrite the 4 bytes at (index mod len) with a value (sizes are u32 fields).
    PutU32(usize, u32),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        any::<usize>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..300).prop_map(Mutation::Extend),
        (any::<usize>(), any::<u32>()).prop_map(|(i, v)| Mutation::PutU32(i, v)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Flip(i, mask) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] ^= mask;
            }
            Mutation::Truncate(n) if !bytes.is_empty() => bytes.truncate(n % bytes.len()),
            Mutation::Extend(more) => bytes.extend_from_slice(more),
            Mutation::PutU32(i, v) if bytes.len() >= 4 => {
                let i = i % (bytes.len() - 3);
                bytes[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// Round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_request_round_trips_through_encode_and_decode(
        id in arb_client_id(),
        (request, content) in arb_request(),
    ) {
        let bytes = encoded_request(id, &request, &content);
        let decoded = decode_request(&bytes, NO_LIMIT).expect("a valid request decodes");
        prop_assert_eq!(decoded.header.client_id, id);
        prop_assert_eq!(decoded.header.version, VERSION);
        prop_assert_eq!(decoded.header.code, request.code());
        prop_assert_eq!(decoded.header.payload_size, request.payload_size());
        prop_assert_eq!(
            decoded.header.payload_size as usize,
            bytes.len() - REQUEST_HEADER_LEN,
            "securexfer sends the spec layout: the payload size covers the content"
        );
        prop_assert_eq!(&decoded.request, &request);
        prop_assert_eq!(decoded.len, bytes.len());
        prop_assert_eq!(&bytes[decoded.content.clone()], &content[..]);
    }

    #[test]
    fn request_header_round_trips_with_any_version_and_id(
        id in arb_client_id(),
        version in any::<u8>(),
        code in prop::sample::select(RequestCode::ALL.to_vec()),
        content_blocks in 1u32..1000,
    ) {
        let payload_size = code
            .fixed_payload_len()
            .unwrap_or(FILE_HEADER_LEN as u32 + content_blocks * AES_BLOCK_LEN as u32);
        let header = RequestHeader { client_id: id, version, code, payload_size };
        prop_assert_eq!(RequestHeader::decode(&header.encode()), Ok(header));
    }

    #[test]
    fn every_response_round_trips_through_encode_and_decode(response in arb_response()) {
        let bytes = response.encode(Version::V3);
        let (header, decoded, len) = decode_response(&bytes).expect("a valid response decodes");
        prop_assert_eq!(header.version, VERSION);
        prop_assert_eq!(header.code, response.code());
        prop_assert_eq!(header.payload_size as usize, bytes.len() - RESPONSE_HEADER_LEN);
        prop_assert_eq!(&decoded, &response);
        prop_assert_eq!(len, bytes.len());
    }

    #[test]
    fn a_stream_of_requests_decodes_one_after_another(
        id in arb_client_id(),
        requests in prop::collection::vec(arb_request(), 1..6),
    ) {
        let stream: Vec<u8> = requests
            .iter()
            .flat_map(|(r, c)| encoded_request(id, r, c))
            .collect();
        let mut at = 0;
        for (request, content) in &requests {
            let decoded = decode_request(&stream[at..], NO_LIMIT).expect("decodes");
            prop_assert_eq!(&decoded.request, request);
            let content_at = at + decoded.content.start;
            prop_assert_eq!(&stream[content_at..content_at + content.len()], &content[..]);
            at += decoded.len;
        }
        prop_assert_eq!(at, stream.len());
    }

    #[test]
    fn a_stream_of_responses_decodes_one_after_another(
        responses in prop::collection::vec(arb_response(), 1..6),
    ) {
        let stream: Vec<u8> = responses.iter().flat_map(|r| r.encode(Version::V3)).collect();
        let mut at = 0;
        for response in &responses {
            let (_, decoded, len) = decode_response(&stream[at..]).expect("decodes");
            prop_assert_eq!(&decoded, response);
            at += len;
        }
        prop_assert_eq!(at, stream.len());
    }

    #[test]
    fn every_strict_prefix_of_a_valid_request_is_incomplete(
        id in arb_client_id(),
        (request, content) in arb_request(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encoded_request(id, &request, &content);
        let cut = cut.index(bytes.len());
        let result = decode_request(&bytes[..cut], NO_LIMIT);
        let Err(DecodeError::Incomplete { needed }) = result else {
            return Err(TestCaseError::fail(format!("prefix of {cut} bytes gave {result:?}")));
        };
        prop_assert!(needed > 0 && needed <= bytes.len() - cut, "needed {needed}");
    }

    #[test]
    fn every_strict_prefix_of_a_valid_response_is_incomplete(
        response in arb_response(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = response.encode(Version::V3);
        let cut = cut.index(bytes.len());
        let result = decode_response(&bytes[..cut]);
        let Err(DecodeError::Incomplete { needed }) = result else {
            return Err(TestCaseError::fail(format!("prefix of {cut} bytes gave {result:?}")));
        };
        prop_assert!(needed > 0 && needed <= bytes.len() - cut, "needed {needed}");
    }

    #[test]
    fn bytes_after_a_valid_message_are_left_for_the_next_one(
        id in arb_client_id(),
        (request, content) in arb_request(),
        response in arb_response(),
        extra in prop::collection::vec(any::<u8>(), 1..100),
    ) {
        let mut bytes = encoded_request(id, &request, &content);
        let len = bytes.len();
        bytes.extend_from_slice(&extra);
        let decoded = decode_request(&bytes, NO_LIMIT).expect("decodes");
        prop_assert_eq!(decoded.len, len);
        prop_assert_eq!(&decoded.request, &request);

        let mut bytes = response.encode(Version::V3);
        let len = bytes.len();
        bytes.extend_from_slice(&extra);
        let (_, decoded, used) = decode_response(&bytes).expect("decodes");
        prop_assert_eq!(used, len);
        prop_assert_eq!(&decoded, &response);
    }

    #[test]
    fn fixed_name_round_trips_and_is_padded_with_zeros(name in arb_name()) {
        let field = name.encode();
        prop_assert_eq!(&field[..name.as_str().len()], name.as_str().as_bytes());
        prop_assert!(field[name.as_str().len()..].iter().all(|&b| b == 0));
        prop_assert_eq!(FixedName::decode(&field, "name"), Ok(name));
    }

    #[test]
    fn encrypted_len_is_the_next_whole_block_after_the_data(len in 0u64..=MAX_PLAINTEXT_SIZE) {
        let enc = encrypted_len(len);
        prop_assert_eq!(enc % AES_BLOCK_LEN as u64, 0);
        prop_assert!(enc > len && enc - len <= AES_BLOCK_LEN as u64);
        prop_assert!(enc <= u64::from(MAX_CONTENT_SIZE));
    }
}

// ---------------------------------------------------------------------------------------
// Arbitrary and damaged input never panics

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        max_content in any::<u32>(),
    ) {
        let _ = decode_request(&bytes, max_content);
        let _ = decode_response(&bytes);
        if let Some(header) = bytes.get(..REQUEST_HEADER_LEN) {
            let _ = RequestHeader::decode(header.try_into().expect("23"));
        }
        if let Some(header) = bytes.get(..RESPONSE_HEADER_LEN) {
            let _ = ResponseHeader::decode(header.try_into().expect("7"));
        }
        if let Some(file) = bytes.get(..FILE_HEADER_LEN) {
            let _ = FileHeader::decode(file.try_into().expect("259"));
        }
    }

    #[test]
    fn decoding_arbitrary_headers_never_panics(
        request_header in any::<[u8; REQUEST_HEADER_LEN]>(),
        response_header in any::<[u8; RESPONSE_HEADER_LEN]>(),
        file_header in prop::collection::vec(any::<u8>(), FILE_HEADER_LEN),
        payload_size in any::<u32>(),
        max_content in any::<u32>(),
    ) {
        let _ = RequestHeader::decode(&request_header);
        let _ = ResponseHeader::decode(&response_header);
        if let Ok(file) = FileHeader::decode(file_header.as_slice().try_into().expect("259")) {
            let _ = file.check_sizes(payload_size, max_content);
        }
    }

    #[test]
    fn decoding_arbitrary_payloads_behind_valid_headers_never_panics(
        id in any::<[u8; 16]>(),
        version in any::<u8>(),
        request_code in prop::sample::select(RequestCode::ALL.to_vec()),
        response_code in prop::sample::select(ResponseCode::ALL.to_vec()),
        payload_size in prop_oneof![any::<u32>(), 0u32..600],
        payload in prop::collection::vec(any::<u8>(), 0..700),
        max_content in any::<u32>(),
    ) {
        let mut request = raw_request_header(id, version, request_code.as_u16(), payload_size);
        request.extend_from_slice(&payload);
        let _ = decode_request(&request, max_content);
        let _ = Request::decode_payload(request_code, &payload);

        let mut response = vec![version];
        response.extend_from_slice(&response_code.as_u16().to_le_bytes());
        response.extend_from_slice(&payload_size.to_le_bytes());
        response.extend_from_slice(&payload);
        let _ = decode_response(&response);
        let payload_size = payload.len() as u32;
        let header = ResponseHeader { version, code: response_code, payload_size };
        let _ = decode_response_payload(&header, &payload);
    }

    #[test]
    fn decoding_arbitrary_name_fields_never_panics(
        field in prop::collection::vec(any::<u8>(), NAME_LEN),
    ) {
        let field: [u8; NAME_LEN] = field.try_into().expect("255");
        if let Ok(name) = FixedName::decode(&field, "name") {
            let text = name.as_str().as_bytes();
            prop_assert!(!text.is_empty() && text.len() < NAME_LEN);
            prop_assert_eq!(&field[..text.len()], text);
            prop_assert_eq!(field[text.len()], 0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn decoding_damaged_requests_never_panics(
        id in arb_client_id(),
        (request, content) in arb_request(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
        max_content in prop_oneof![Just(NO_LIMIT), any::<u32>()],
    ) {
        let bytes = apply(encoded_request(id, &request, &content), &mutations);
        if let Ok(decoded) = decode_request(&bytes, max_content) {
            prop_assert!(decoded.len <= bytes.len());
            prop_assert!(decoded.content.end == decoded.len);
        }
    }

    #[test]
    fn decoding_damaged_responses_never_panics(
        response in arb_response(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let bytes = apply(response.encode(Version::V3), &mutations);
        if let Ok((header, _, len)) = decode_response(&bytes) {
            prop_assert_eq!(len, RESPONSE_HEADER_LEN + header.payload_size as usize);
            prop_assert!(len <= bytes.len());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The exact wire layout

#[test]
fn request_header_is_id_version_code_size_little_endian() {
    let id = ClientId([0xAB; 16]);
    let bytes = encode_request(Version::V3, id, &Request::Register { name: name("bob") });
    assert_eq!(bytes.len(), REQUEST_HEADER_LEN + NAME_LEN);
    assert_eq!(&bytes[..16], &[0xAB; 16]);
    assert_eq!(bytes[16], 3);
    assert_eq!(&bytes[17..19], &[0x01, 0x04], "1025 little-endian");
    assert_eq!(&bytes[19..23], &[0xFF, 0, 0, 0], "255 little-endian");
    assert_eq!(&bytes[23..27], b"bob\0");
    assert!(bytes[27..].iter().all(|&b| b == 0));
}

#[test]
fn send_file_payload_size_covers_content_size_and_name_and_content() {
    let header = FileHeader { content_size: 32, file_name: name("f") };
    let bytes = encode_request(Version::V3, ClientId::ZERO, &Request::SendFile(header));
    assert_eq!(bytes.len(), REQUEST_HEADER_LEN + FILE_HEADER_LEN, "content is not included");
    assert_eq!(&bytes[17..19], &1028u16.to_le_bytes());
    assert_eq!(&bytes[19..23], &(259u32 + 32).to_le_bytes());
    assert_eq!(&bytes[23..27], &32u32.to_le_bytes());
    assert_eq!(&bytes[27..29], b"f\0");
}

#[test]
fn response_header_is_version_code_size_little_endian() {
    let bytes = Response::Registered { client_id: ClientId([9; 16]) }.encode(Version::V3);
    assert_eq!(&bytes[..7], &[3, 0x34, 0x08, 16, 0, 0, 0], "3, 2100 LE, 16 LE");
    assert_eq!(&bytes[7..], &[9; 16]);
}

#[test]
fn file_received_payload_is_id_size_name_cksum() {
    let response = Response::FileReceived {
        client_id: ClientId([1; 16]),
        content_size: 0x0102_0304,
        file_name: name("x.bin"),
        cksum: 0xA1B2_C3D4,
    };
    let bytes = response.encode(Version::V3);
    assert_eq!(bytes.len(), RESPONSE_HEADER_LEN + FILE_RECEIVED_LEN);
    let payload = &bytes[RESPONSE_HEADER_LEN..];
    assert_eq!(&payload[..16], &[1; 16]);
    assert_eq!(&payload[16..20], &[4, 3, 2, 1]);
    assert_eq!(&payload[20..26], b"x.bin\0");
    assert_eq!(&payload[275..279], &[0xD4, 0xC3, 0xB2, 0xA1]);
}

#[test]
fn acknowledged_without_id_encodes_an_empty_payload() {
    let bytes = Response::Acknowledged { client_id: None }.encode(Version::V3);
    assert_eq!(bytes.len(), RESPONSE_HEADER_LEN);
    assert_eq!(&bytes[3..7], &[0, 0, 0, 0]);
}

#[test]
fn protocol_constants_match_the_spec_sizes() {
    assert_eq!(REQUEST_HEADER_LEN, 23);
    assert_eq!(RESPONSE_HEADER_LEN, 7);
    assert_eq!(FILE_HEADER_LEN, 259);
    assert_eq!(FILE_RECEIVED_LEN, 279);
    assert_eq!(MAX_CONTENT_SIZE % AES_BLOCK_LEN as u32, 0);
    assert_eq!(encrypted_len(MAX_PLAINTEXT_SIZE), u64::from(MAX_CONTENT_SIZE));
    assert_eq!(encrypted_len(0), 16);
    assert_eq!(encrypted_len(15), 16);
    assert_eq!(encrypted_len(16), 32);
}

#[test]
fn codes_convert_both_ways() {
    for code in RequestCode::ALL {
        assert_eq!(RequestCode::try_from(code.as_u16()), Ok(code));
    }
    for code in ResponseCode::ALL {
        assert_eq!(ResponseCode::try_from(code.as_u16()), Ok(code));
    }
    let request_numbers: Vec<u16> = RequestCode::ALL.iter().map(|c| c.as_u16()).collect();
    assert_eq!(request_numbers, (1025..=1031).collect::<Vec<_>>());
    let response_numbers: Vec<u16> = ResponseCode::ALL.iter().map(|c| c.as_u16()).collect();
    assert_eq!(response_numbers, (2100..=2107).collect::<Vec<_>>());
}

#[test]
fn codes_display_their_number_and_name() {
    assert_eq!(RequestCode::SendFile.to_string(), "1028 (SendFile)");
    assert_eq!(ResponseCode::GeneralError.to_string(), "2107 (GeneralError)");
}

#[test]
fn unknown_code_messages_give_the_range_of_the_code_tables() {
    assert_eq!(
        DecodeError::UnknownRequestCode(7).to_string(),
        "unknown request code 7: protocol 3 has codes 1025-1031"
    );
    assert_eq!(
        DecodeError::UnknownResponseCode(2108).to_string(),
        "unknown response code 2108: protocol 3 has codes 2100-2107"
    );
}

// ---------------------------------------------------------------------------------------
// Each distinct decode error

#[test]
fn unknown_request_code_is_refused_and_keeps_its_value() {
    for raw in [0, 1024, 1032, 2100, u16::MAX] {
        assert_eq!(RequestCode::try_from(raw), Err(DecodeError::UnknownRequestCode(raw)));
        let bytes = raw_request_header([0; 16], 3, raw, 255);
        assert_eq!(
            RequestHeader::decode(&request_header_array(&bytes)),
            Err(DecodeError::UnknownRequestCode(raw))
        );
        assert_eq!(decode_request(&bytes, NO_LIMIT), Err(DecodeError::UnknownRequestCode(raw)));
    }
}

#[test]
fn unknown_response_code_is_refused_and_keeps_its_value() {
    for raw in [0, 1025, 2099, 2108, u16::MAX] {
        assert_eq!(ResponseCode::try_from(raw), Err(DecodeError::UnknownResponseCode(raw)));
        assert_eq!(
            decode_response(&raw_response(3, raw, &[])).map(|(_, r, _)| r),
            Err(DecodeError::UnknownResponseCode(raw))
        );
    }
}

#[test]
fn fixed_size_request_with_another_payload_size_is_refused_from_the_header() {
    for code in RequestCode::ALL {
        let Some(expected) = code.fixed_payload_len() else { continue };
        for actual in [0, 1, expected - 1, expected + 1, u32::MAX] {
            let bytes = raw_request_header([0; 16], 3, code.as_u16(), actual);
            let error = DecodeError::WrongPayloadSize { code: code.as_u16(), expected, actual };
            assert_eq!(RequestHeader::decode(&request_header_array(&bytes)), Err(error.clone()));
            // The header alone is enough to refuse it: no waiting for a payload.
            assert_eq!(decode_request(&bytes, NO_LIMIT), Err(error));
        }
    }
}

#[test]
fn fixed_payload_sizes_are_the_spec_sizes() {
    assert_eq!(RequestCode::SendPublicKey.fixed_payload_len(), Some(255 + 160));
    assert_eq!(RequestCode::SendFile.fixed_payload_len(), None);
    for code in [
        RequestCode::Register,
        RequestCode::Reconnect,
        RequestCode::CrcOk,
        RequestCode::CrcRetry,
        RequestCode::CrcGiveUp,
    ] {
        assert_eq!(code.fixed_payload_len(), Some(255), "{code}");
    }
}

#[test]
fn send_file_shorter_than_its_file_header_is_refused_from_the_header() {
    for actual in [0, 4, 258] {
        let bytes = raw_request_header([0; 16], 3, 1028, actual);
        assert_eq!(
            decode_request(&bytes, NO_LIMIT),
            Err(DecodeError::WrongPayloadSize { code: 1028, expected: 259, actual })
        );
    }
}

#[test]
fn decode_payload_refuses_a_payload_of_the_wrong_length() {
    assert_eq!(
        Request::decode_payload(RequestCode::Register, &[b'a'; 10]),
        Err(DecodeError::WrongPayloadSize { code: 1025, expected: 255, actual: 10 })
    );
    assert_eq!(
        Request::decode_payload(RequestCode::SendFile, &[0; 260]),
        Err(DecodeError::WrongPayloadSize { code: 1028, expected: 259, actual: 260 })
    );
}

#[test]
fn name_without_terminator_is_refused_not_read_as_255_characters() {
    let mut bytes = raw_request_header([0; 16], 3, 1025, 255);
    bytes.extend_from_slice(&[b'a'; NAME_LEN]);
    assert_eq!(
        decode_request(&bytes, NO_LIMIT),
        Err(DecodeError::NameNotTerminated { field: "name" })
    );
    let mut bytes = raw_request_header([0; 16], 3, 1029, 255);
    bytes.extend_from_slice(&[b'a'; NAME_LEN]);
    assert_eq!(
        decode_request(&bytes, NO_LIMIT),
        Err(DecodeError::NameNotTerminated { field: "file name" })
    );
    let bytes = raw_send_file(259 + 16, 16, &[b'a'; NAME_LEN], &[0; 16]);
    assert_eq!(
        decode_request(&bytes, NO_LIMIT),
        Err(DecodeError::NameNotTerminated { field: "file name" })
    );
}

#[test]
fn name_of_254_characters_is_the_longest_accepted() {
    let longest = "n".repeat(254);
    let field = raw_name(longest.as_bytes());
    assert_eq!(FixedName::decode(&field, "name").map(|n| n.as_str().len()), Ok(254));
    assert!(FixedName::new(&longest, "name").is_ok());
    assert_eq!(
        FixedName::new(&"n".repeat(255), "name"),
        Err(DecodeError::NameNotTerminated { field: "name" })
    );
}

#[test]
fn name_with_non_ascii_byte_is_refused_with_its_position() {
    let field = raw_name(b"abc\x80def");
    assert_eq!(
        FixedName::decode(&field, "name"),
        Err(DecodeError::NameNotPrintableAscii { field: "name", byte: 0x80, position: 3 })
    );
    let field = raw_name("é".as_bytes());
    assert_eq!(
        FixedName::decode(&field, "file name"),
        Err(DecodeError::NameNotPrintableAscii { field: "file name", byte: 0xC3, position: 0 })
    );
    assert!(matches!(
        FixedName::new("caf\u{e9}", "name"),
        Err(DecodeError::NameNotPrintableAscii { byte: 0xC3, position: 3, .. })
    ));
}

#[test]
fn name_with_control_byte_is_refused() {
    for (text, byte, position) in
        [(&b"a\nb"[..], b'\n', 1), (b"\x01", 1, 0), (b"ab\x1f", 0x1f, 2), (b"a\x7f", 0x7f, 1)]
    {
        assert_eq!(
            FixedName::decode(&raw_name(text), "name"),
            Err(DecodeError::NameNotPrintableAscii { field: "name", byte, position }),
            "{text:?}"
        );
    }
    assert!(matches!(
        FixedName::new("tab\there", "name"),
        Err(DecodeError::NameNotPrintableAscii { byte: b'\t', position: 3, .. })
    ));
    // Through a whole request too.
    let mut bytes = raw_request_header([0; 16], 3, 1027, 255);
    bytes.extend_from_slice(&raw_name(b"bob\r"));
    assert!(matches!(
        decode_request(&bytes, NO_LIMIT),
        Err(DecodeError::NameNotPrintableAscii { byte: b'\r', position: 3, .. })
    ));
}

#[test]
fn empty_name_is_refused() {
    assert_eq!(
        FixedName::decode(&[0; NAME_LEN], "name"),
        Err(DecodeError::EmptyName { field: "name" })
    );
    assert_eq!(FixedName::new("", "name"), Err(DecodeError::EmptyName { field: "name" }));
    let mut bytes = raw_request_header([0; 16], 3, 1025, 255);
    bytes.extend_from_slice(&[0; NAME_LEN]);
    assert_eq!(decode_request(&bytes, NO_LIMIT), Err(DecodeError::EmptyName { field: "name" }));
}

#[test]
fn bytes_after_the_name_terminator_are_ignored_padding() {
    let mut field = raw_name(b"alice");
    field[6..].fill(0xCC);
    assert_eq!(
        FixedName::decode(&field, "name").map(|n| n.as_str().to_owned()),
        Ok("alice".into())
    );
}

#[test]
fn send_file_whose_payload_and_content_sizes_disagree_is_refused() {
    for (payload_size, content_size) in [(259 + 32, 16), (259 + 16, 32), (300, 16), (260, 16)] {
        let bytes = raw_send_file(payload_size, content_size, b"f", &[0; 64]);
        assert_eq!(
            decode_request(&bytes, NO_LIMIT),
            Err(DecodeError::FileSizeMismatch { payload_size, content_size }),
            "payload {payload_size}, content {content_size}"
        );
    }
}

#[test]
fn send_file_with_payload_259_and_content_after_it_is_accepted() {
    let content: Vec<u8> = (0..48).collect();
    let bytes = raw_send_file(259, 48, b"short.bin", &content);
    let decoded = decode_request(&bytes, NO_LIMIT).expect("the short layout is accepted");
    assert_eq!(decoded.header.payload_size, 259);
    let Request::SendFile(file) = &decoded.request else { panic!("not a 1028: {decoded:?}") };
    assert_eq!(file.content_size, 48);
    assert_eq!(file.file_name.as_str(), "short.bin");
    assert_eq!(decoded.content, REQUEST_HEADER_LEN + 259..REQUEST_HEADER_LEN + 259 + 48);
    assert_eq!(&bytes[decoded.content.clone()], &content[..]);
    assert_eq!(decoded.len, bytes.len());
    assert_eq!(file.check_sizes(259, NO_LIMIT), Ok(()));
}

#[test]
fn send_file_with_payload_259_and_content_size_zero_is_refused() {
    let bytes = raw_send_file(259, 0, b"f", &[]);
    assert_eq!(decode_request(&bytes, NO_LIMIT), Err(DecodeError::BadContentSize(0)));
}

#[test]
fn send_file_whose_content_is_not_whole_blocks_is_refused() {
    for content_size in [1, 15, 17, 4095] {
        let bytes = raw_send_file(259 + content_size, content_size, b"f", &[]);
        assert_eq!(
            decode_request(&bytes, NO_LIMIT),
            Err(DecodeError::BadContentSize(content_size))
        );
        let bytes = raw_send_file(259, content_size, b"f", &[]);
        assert_eq!(
            decode_request(&bytes, NO_LIMIT),
            Err(DecodeError::BadContentSize(content_size))
        );
    }
}

#[test]
fn send_file_over_the_content_limit_is_refused_before_the_content_arrives() {
    // Only the header and file header are in the buffer: the refusal must not wait.
    let bytes = raw_send_file(259 + 64, 64, b"f", &[]);
    assert_eq!(
        decode_request(&bytes, 48),
        Err(DecodeError::ContentTooLarge { actual: 64, max: 48 })
    );
    let bytes = raw_send_file(259, MAX_CONTENT_SIZE, b"f", &[]);
    assert_eq!(
        decode_request(&bytes, 1 << 20),
        Err(DecodeError::ContentTooLarge { actual: MAX_CONTENT_SIZE, max: 1 << 20 })
    );
}

#[test]
fn send_file_of_exactly_the_content_limit_is_accepted() {
    let bytes = raw_send_file(259 + 64, 64, b"f", &[0; 64]);
    assert!(decode_request(&bytes, 64).is_ok());
}

#[test]
fn largest_possible_content_size_passes_the_size_checks() {
    let file = FileHeader { content_size: MAX_CONTENT_SIZE, file_name: name("big") };
    assert_eq!(file.check_sizes(259, NO_LIMIT), Ok(()));
    // 259 + MAX_CONTENT_SIZE overflows u32: no payload size can state it, so only the
    // short layout can carry the largest file.
    assert!(file.check_sizes(u32::MAX, NO_LIMIT).is_err());
}

#[test]
fn short_buffers_are_incomplete_and_say_how_much_is_missing() {
    assert_eq!(decode_request(&[], NO_LIMIT), Err(DecodeError::Incomplete { needed: 23 }));
    assert_eq!(decode_request(&[0; 22], NO_LIMIT), Err(DecodeError::Incomplete { needed: 1 }));
    let header = raw_request_header([0; 16], 3, 1025, 255);
    assert_eq!(decode_request(&header, NO_LIMIT), Err(DecodeError::Incomplete { needed: 255 }));

    let mut file = raw_send_file(259 + 32, 32, b"f", &[0; 20]);
    assert_eq!(decode_request(&file, NO_LIMIT), Err(DecodeError::Incomplete { needed: 12 }));
    file.extend_from_slice(&[0; 12]);
    assert!(decode_request(&file, NO_LIMIT).is_ok());

    assert_eq!(decode_response(&[]), Err(DecodeError::Incomplete { needed: 7 }));
    let response = Response::Registered { client_id: ClientId([5; 16]) }.encode(Version::V3);
    assert_eq!(decode_response(&response[..10]), Err(DecodeError::Incomplete { needed: 13 }));
}

#[test]
fn invalid_header_is_an_error_even_when_the_payload_has_not_arrived() {
    // 23 bytes are enough to tell that these will never become valid.
    let unknown = raw_request_header([0; 16], 3, 999, 255);
    assert_eq!(decode_request(&unknown, NO_LIMIT), Err(DecodeError::UnknownRequestCode(999)));
    let lying = raw_request_header([0; 16], 3, 1026, 1 << 30);
    assert!(matches!(
        decode_request(&lying, NO_LIMIT),
        Err(DecodeError::WrongPayloadSize { code: 1026, .. })
    ));
    // A 1028 with an impossible content size is refused once its 259-byte header is in.
    let bad = raw_send_file(259 + 17, 17, b"f", &[]);
    assert_eq!(decode_request(&bad, NO_LIMIT), Err(DecodeError::BadContentSize(17)));
}

#[test]
fn response_with_a_huge_payload_size_is_refused_from_the_header() {
    let mut header = vec![3];
    header.extend_from_slice(&2102u16.to_le_bytes());
    header.extend_from_slice(&(MAX_RESPONSE_PAYLOAD + 1).to_le_bytes());
    assert_eq!(
        decode_response(&header),
        Err(DecodeError::PayloadTooLarge {
            code: 2102,
            actual: MAX_RESPONSE_PAYLOAD + 1,
            max: MAX_RESPONSE_PAYLOAD
        })
    );
}

#[test]
fn request_with_any_version_byte_is_accepted_and_the_byte_kept() {
    let valid =
        encode_request(Version::V3, ClientId([1; 16]), &Request::Reconnect { name: name("bob") });
    for version in 0..=u8::MAX {
        let mut bytes = valid.clone();
        bytes[CLIENT_ID_LEN] = version;
        let decoded = decode_request(&bytes, NO_LIMIT).expect("any version is accepted");
        assert_eq!(decoded.header.version, version);
        assert_eq!(decoded.request, Request::Reconnect { name: name("bob") });
    }
}

#[test]
fn response_with_any_version_byte_is_accepted_and_the_byte_kept() {
    for version in 0..=u8::MAX {
        let bytes = raw_response(version, 2104, &[4; 16]);
        let (header, response, _) = decode_response(&bytes).expect("any version is accepted");
        assert_eq!(header.version, version);
        assert_eq!(response, Response::Acknowledged { client_id: Some(ClientId([4; 16])) });
    }
}

#[test]
fn any_client_id_is_accepted_in_register() {
    for id in [[0; 16], [0xAA; 16], [0xFF; 16]] {
        let bytes =
            encode_request(Version::V3, ClientId(id), &Request::Register { name: name("bob") });
        assert_eq!(decode_request(&bytes, NO_LIMIT).map(|d| d.header.client_id), Ok(ClientId(id)));
    }
}

#[test]
fn acknowledged_and_reconnect_denied_with_empty_payload_are_accepted() {
    let (_, response, len) = decode_response(&raw_response(3, 2104, &[])).expect("empty 2104");
    assert_eq!(response, Response::Acknowledged { client_id: None });
    assert_eq!(len, RESPONSE_HEADER_LEN);
    let (_, response, _) = decode_response(&raw_response(2, 2106, &[])).expect("empty 2106");
    assert_eq!(response, Response::ReconnectDenied { client_id: None });
    let (_, response, _) = decode_response(&raw_response(3, 2106, &[8; 16])).expect("2106 with id");
    assert_eq!(response, Response::ReconnectDenied { client_id: Some(ClientId([8; 16])) });
}

#[test]
fn acknowledged_and_reconnect_denied_with_a_partial_id_are_refused() {
    for code in [2104, 2106] {
        for len in [1, 15, 17] {
            assert_eq!(
                decode_response(&raw_response(3, code, &vec![0; len])).map(|(_, r, _)| r),
                Err(DecodeError::BadResponsePayload {
                    code,
                    expected: "0 or 16",
                    actual: len as u32
                })
            );
        }
    }
}

#[test]
fn responses_with_the_wrong_payload_size_are_refused() {
    let cases: [(u16, usize, &str); 6] = [
        (2100, 0, "16"),
        (2100, 17, "16"),
        (2102, 16, "16 + encrypted key"),
        (2105, 3, "16 + encrypted key"),
        (2103, 278, "279"),
        (2103, 280, "279"),
    ];
    for (code, len, expected) in cases {
        assert_eq!(
            decode_response(&raw_response(3, code, &vec![1; len])).map(|(_, r, _)| r),
            Err(DecodeError::BadResponsePayload { code, expected, actual: len as u32 }),
            "{code} with {len} bytes"
        );
    }
}

#[test]
fn file_received_with_a_bad_file_name_is_refused() {
    let mut payload = vec![0u8; FILE_RECEIVED_LEN];
    payload[20..20 + NAME_LEN].fill(b'x');
    assert_eq!(
        decode_response(&raw_response(3, 2103, &payload)).map(|(_, r, _)| r),
        Err(DecodeError::NameNotTerminated { field: "file name" })
    );
}

#[test]
fn payloadless_responses_tolerate_a_payload() {
    for (code, expected) in [(2101, Response::RegistrationFailed), (2107, Response::GeneralError)] {
        let (_, response, len) =
            decode_response(&raw_response(3, code, &[1, 2, 3])).expect("decodes");
        assert_eq!(response, expected);
        assert_eq!(len, RESPONSE_HEADER_LEN + 3, "the payload is consumed");
    }
}

#[test]
fn decode_errors_explain_themselves() {
    let message = DecodeError::UnknownRequestCode(4242).to_string();
    assert!(message.contains("4242"), "{message}");
    let message = DecodeError::FileSizeMismatch { payload_size: 300, content_size: 16 }.to_string();
    assert!(message.contains("300") && message.contains("16"), "{message}");
}

// ---------------------------------------------------------------------------------------
// Client ids

#[test]
fn client_id_parses_hex_and_dashed_uuid_and_prints_lowercase_hex() {
    let id = ClientId::random();
    let hex = id.to_hex();
    assert_eq!(hex.len(), 32);
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(ClientId::parse(&hex), Some(id));
    assert_eq!(ClientId::parse(&hex.to_uppercase()), Some(id));
    let dashed =
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    assert_eq!(ClientId::parse(&dashed), Some(id));
    assert_eq!(ClientId::parse(&format!("  {hex}\n")), Some(id));
    assert_eq!(ClientId::parse("not an id"), None);
    assert_eq!(ClientId::parse(&hex[1..]), None);
    assert_ne!(ClientId::random(), id);
}

// ---------------------------------------------------------------------------------------
// storage_name

#[test]
fn storage_name_keeps_a_plain_name() {
    assert_eq!(storage_name("small.bin"), Ok("small.bin"));
    assert_eq!(storage_name("..."), Ok("..."), "three dots is a plain name");
    assert_eq!(storage_name("a b.txt"), Ok("a b.txt"));
}

#[test]
fn storage_name_keeps_only_the_last_path_component() {
    assert_eq!(storage_name("../x"), Ok("x"));
    assert_eq!(storage_name("../../../etc/shadow"), Ok("shadow"));
    assert_eq!(storage_name("/etc/passwd"), Ok("passwd"));
    assert_eq!(storage_name("/home/u/f.txt"), Ok("f.txt"));
    assert_eq!(storage_name("C:\\dir\\f.txt"), Ok("f.txt"));
    assert_eq!(storage_name("C:\\Users\\u/mixed\\f.txt"), Ok("f.txt"));
    assert_eq!(storage_name("\\\\server\\share\\f.txt"), Ok("f.txt"));
}

#[test]
fn storage_name_drops_a_windows_drive_prefix() {
    assert_eq!(storage_name("C:f.txt"), Ok("f.txt"));
    assert_eq!(storage_name("z:f.txt"), Ok("f.txt"));
    assert_eq!(storage_name("C:"), Err(FileNameError::Empty("C:".into())));
    assert_eq!(storage_name("C:.."), Err(FileNameError::DotName("C:..".into())));
}

#[test]
fn storage_name_refuses_dot_names() {
    for sent in ["..", ".", "dir\\..", "dir/.", "a/b/..", "C:\\dir\\.."] {
        assert_eq!(storage_name(sent), Err(FileNameError::DotName(sent.into())), "{sent:?}");
    }
}

#[test]
fn storage_name_refuses_names_with_no_last_component() {
    for sent in ["", "a/", "dir\\", "/", "\\"] {
        assert_eq!(storage_name(sent), Err(FileNameError::Empty(sent.into())), "{sent:?}");
    }
}

#[test]
fn storage_name_refuses_control_characters_anywhere() {
    for sent in ["a\nb", "f.txt\0", "\0", "dir\x01/f.txt", "f\x7f", "tab\t", "f\u{85}"] {
        assert_eq!(
            storage_name(sent),
            Err(FileNameError::ControlCharacter(sent.into())),
            "{sent:?}"
        );
    }
}

#[test]
fn storage_name_refuses_the_reserved_temporary_prefix() {
    let reserved = format!("{TEMP_PREFIX}123");
    assert_eq!(storage_name(&reserved), Err(FileNameError::Reserved(reserved.clone())));
    let in_dir = format!("dir/{TEMP_PREFIX}x");
    assert_eq!(storage_name(&in_dir), Err(FileNameError::Reserved(in_dir.clone())));
    let with_drive = format!("C:{TEMP_PREFIX}x");
    assert_eq!(storage_name(&with_drive), Err(FileNameError::Reserved(with_drive.clone())));
    // Only the prefix is reserved.
    let inside = format!("x{TEMP_PREFIX}");
    assert_eq!(storage_name(&inside), Ok(inside.as_str()));
}

/// Strings made mostly of the characters that matter to path handling.
fn arb_hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[./\\\\:a-zC\\x00-\\x1f\\x7f\u{85} -]{0,16}",
        "(\\.|\\.\\.|[a-zC]:|[a-z]{1,3}|[/\\\\]){0,8}",
        "[ -~]{0,254}",
        "(\\.securexfer-part-|/|x){0,4}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn storage_name_never_returns_a_name_that_escapes_or_confuses(sent in arb_hostile_name()) {
        if let Ok(stored) = storage_name(&sent) {
            prop_assert!(!stored.is_empty());
            prop_assert!(stored != "." && stored != "..", "{stored:?}");
            prop_assert!(!stored.contains(['/', '\\', '\0']), "{stored:?}");
            prop_assert!(!stored.chars().any(char::is_control), "{stored:?}");
            prop_assert!(!stored.starts_with(TEMP_PREFIX), "{stored:?}");
            prop_assert!(sent.ends_with(stored), "{stored:?} is not the tail of {sent:?}");
        }
    }

    #[test]
    fn storage_name_keeps_any_simple_name_unchanged(sent in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,60}") {
        prop_assert_eq!(storage_name(&sent), Ok(sent.as_str()));
    }
}

#[test]
fn the_largest_content_is_announced_with_the_259_byte_layout_and_decodes() {
    use super::*;
    let header = FileHeader {
        content_size: MAX_CONTENT_SIZE,
        file_name: FixedName::new("big.bin", "file name").unwrap(),
    };
    let request = Request::SendFile(header.clone());
    assert_eq!(request.payload_size(), FILE_HEADER_LEN as u32);
    header.check_sizes(request.payload_size(), MAX_CONTENT_SIZE).unwrap();
    // Content that still fits the spec's layout uses it.
    let small = Request::SendFile(FileHeader { content_size: 4096, ..header });
    assert_eq!(small.payload_size(), FILE_HEADER_LEN as u32 + 4096);
}
