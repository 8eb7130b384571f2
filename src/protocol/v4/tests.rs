//! Tests of protocol 4's codec: headers and frames round trip, a frame's strict prefixes are
//! incomplete, a bad header is refused from its 12 bytes alone, the tag rules, the payloads
//! of `HELLO`, `WELCOME` and `ERROR` have one encoding each, and no input panics.

use super::*;
use crate::protocol::ClientId;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Helpers

/// A header with arbitrary fields, as raw bytes (to build invalid ones).
fn raw_header(raw_type: u16, flags: u16, tag: u32, length: u32) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..2].copy_from_slice(&raw_type.to_le_bytes());
    out[2..4].copy_from_slice(&flags.to_le_bytes());
    out[4..8].copy_from_slice(&tag.to_le_bytes());
    out[8..].copy_from_slice(&length.to_le_bytes());
    out
}

/// The side that reads frames of `frame_type`.
fn reader_of(frame_type: FrameType) -> Side {
    match frame_type.sender() {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    }
}

fn header(frame_type: FrameType, tag: u32, length: u32) -> FrameHeader {
    FrameHeader::new(frame_type, tag, length).expect("a length within the type's limit")
}

fn hello() -> Hello {
    Hello { major: MAJOR_VERSION, minor: MINOR_VERSION, software: "securexfer 0.1.0".into() }
}

fn error_frame() -> ErrorFrame {
    ErrorFrame {
        code: ErrorCode::QuotaExceeded,
        closes: false,
        unit: ErrorUnit::Bytes,
        retry_after_ms: 0,
        value: 10,
        limit: 5,
        message: "the bytes quota of 5 B is reached".into(),
    }
}

fn welcome() -> Welcome {
    Welcome {
        minor: 0,
        registration: Registration::Open,
        registered: true,
        client_id: ClientId([7; 16]),
        max_data: MAX_DATA_PAYLOAD,
        max_in_flight: 64,
        max_open_puts: 64,
        max_file_size: 4 << 30,
        resume_window: 86_400,
        bytes_used: 1,
        bytes_quota: u64::MAX,
        files_used: 1,
        files_quota: u64::MAX,
        now: 1_796_000_000,
        name: "alice".into(),
        software: "securexfer 0.1.0".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Strategies

fn arb_type() -> impl Strategy<Value = FrameType> {
    prop::sample::select(FrameType::ALL.to_vec())
}

/// A valid header: any type, any tag, a length within the type's limit.
fn arb_header() -> impl Strategy<Value = FrameHeader> {
    (arb_type(), any::<u32>()).prop_flat_map(|(frame_type, tag)| {
        let (min, max) = frame_type.payload_rule().bounds();
        (min..=max).prop_map(move |length| header(frame_type, tag, length))
    })
}

/// A valid frame with a small payload (the length limits are tested on headers).
fn arb_frame() -> impl Strategy<Value = (FrameType, u32, Vec<u8>)> {
    (arb_type(), any::<u32>()).prop_flat_map(|(frame_type, tag)| {
        let (min, max) = frame_type.payload_rule().bounds();
        let len = min as usize..=(max as usize).min(300);
        prop::collection::vec(any::<u8>(), len).prop_map(move |payload| (frame_type, tag, payload))
    })
}

/// Text a field accepts: no control characters, any script, at most `max` bytes.
fn arb_text(max: usize) -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{0,40}".prop_map(move |s: String| {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    })
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    (any::<u8>(), any::<u8>(), arb_text(MAX_SOFTWARE_LEN))
        .prop_map(|(major, minor, software)| Hello { major, minor, software })
}

fn arb_welcome() -> impl Strategy<Value = Welcome> {
    (
        (any::<u8>(), prop::sample::select(Registration::ALL.to_vec()), any::<bool>()),
        (any::<[u8; 16]>(), any::<u32>(), any::<u16>(), any::<u16>(), any::<u64>(), any::<u32>()),
        any::<[u64; 4]>(),
        any::<i64>(),
        (arb_text(MAX_CLIENT_NAME_LEN), arb_text(MAX_SOFTWARE_LEN)),
    )
        .prop_map(|(a, b, counts, now, (name, software))| Welcome {
            minor: a.0,
            registration: a.1,
            registered: a.2,
            client_id: ClientId(b.0),
            max_data: b.1,
            max_in_flight: b.2,
            max_open_puts: b.3,
            max_file_size: b.4,
            resume_window: b.5,
            bytes_used: counts[0],
            bytes_quota: counts[1],
            files_used: counts[2],
            files_quota: counts[3],
            now,
            name,
            software,
        })
}

fn arb_error_frame() -> impl Strategy<Value = ErrorFrame> {
    (
        prop::sample::select(ErrorCode::ALL.to_vec()),
        any::<bool>(),
        prop::sample::select(ErrorUnit::ALL.to_vec()),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        arb_text(MAX_ERROR_MESSAGE_LEN),
    )
        .prop_map(|(code, closes, unit, retry_after_ms, value, limit, message)| ErrorFrame {
            code,
            closes,
            unit,
            retry_after_ms,
            value,
            limit,
            message,
        })
}

// ---------------------------------------------------------------------------------------
// The type table

#[test]
fn every_frame_type_converts_back_from_its_number() {
    assert_eq!(FrameType::ALL.len(), 25, "the design lists 25 frame types");
    for frame_type in FrameType::ALL {
        assert_eq!(FrameType::try_from(frame_type.as_u16()), Ok(frame_type));
    }
}

#[test]
fn numbers_outside_the_table_are_unknown_and_keep_their_value() {
    for raw in [0x0000, 0x0002, 0x0011, 0x0100, 0x0206, 0x8000, 0x8202, 0x8383, 0xffff] {
        assert_eq!(FrameType::try_from(raw), Err(FrameError::UnknownType(raw)));
    }
}

#[test]
fn server_frames_and_only_those_have_the_direction_bit() {
    for frame_type in FrameType::ALL {
        let server = frame_type.as_u16() & DIRECTION_BIT != 0;
        assert_eq!(frame_type.sender() == Side::Server, server, "{frame_type}");
        assert_eq!(frame_type.role() == Role::Answer, server, "{frame_type}");
    }
}

#[test]
fn only_data_frames_carry_file_bytes_and_three_types_are_empty() {
    let data: Vec<_> =
        FrameType::ALL.into_iter().filter(|t| t.payload_rule() == PayloadRule::Data).collect();
    assert_eq!(data, [FrameType::PutData, FrameType::GetData]);
    let empty: Vec<_> =
        FrameType::ALL.into_iter().filter(|t| t.payload_rule() == PayloadRule::Empty).collect();
    assert_eq!(empty, [FrameType::PutEnd, FrameType::Discard, FrameType::Discarded]);
    assert_eq!(FrameType::GetData.to_string(), "DATA (0x8010)");
}

// ---------------------------------------------------------------------------------------
// Headers and frames

#[test]
fn a_header_is_little_endian_with_zero_flags() {
    let bytes = header(FrameType::PutData, 0x0403_0201, 0x0001_0000).encode();
    assert_eq!(bytes, [0x10, 0, 0, 0, 1, 2, 3, 4, 0, 0, 1, 0]);
}

#[test]
fn a_wrong_direction_bit_is_refused_from_the_header_alone() {
    // The server reading a server frame, the client reading a client frame: 12 bytes, no
    // payload, and the answer is a refusal rather than "send more".
    let welcome = raw_header(0x8001, 0, 0, 100);
    let hello = raw_header(0x0001, 0, 0, 100);
    let to_server = FrameError::WrongDirection { raw_type: 0x8001, reader: Side::Server };
    let to_client = FrameError::WrongDirection { raw_type: 0x0001, reader: Side::Client };
    assert_eq!(decode_frame(&welcome, Side::Server), Err(to_server));
    assert_eq!(decode_frame(&hello, Side::Client), Err(to_client));
    // Even for a number the table does not have: the bit alone decides.
    assert!(matches!(
        FrameHeader::decode(&raw_header(0xffff, 0, 0, 0), Side::Server),
        Err(FrameError::WrongDirection { raw_type: 0xffff, .. })
    ));
}

#[test]
fn nonzero_flags_are_refused_from_the_header_alone() {
    for flags in [1, 0x8000, 0xffff] {
        assert_eq!(
            decode_frame(&raw_header(0x0001, flags, 0, 3), Side::Server),
            Err(FrameError::NonZeroFlags { frame_type: FrameType::Hello, flags })
        );
    }
}

#[test]
fn an_over_limit_length_is_refused_from_the_header_alone() {
    let cases = [
        (FrameType::Hello, MAX_CONTROL_PAYLOAD + 1),
        (FrameType::Welcome, u32::MAX),
        (FrameType::PutData, 0),
        (FrameType::PutData, MAX_DATA_PAYLOAD + 1),
        (FrameType::GetData, u32::MAX),
        (FrameType::PutEnd, 1),
        (FrameType::Discarded, MAX_CONTROL_PAYLOAD),
    ];
    for (frame_type, length) in cases {
        let bytes = raw_header(frame_type.as_u16(), 0, 1, length);
        let result = decode_frame(&bytes, reader_of(frame_type));
        assert!(
            matches!(result, Err(FrameError::BadLength { frame_type: t, length: l, .. })
                if t == frame_type && l == length),
            "{frame_type} with {length}: {result:?}"
        );
    }
}

#[test]
fn the_largest_frames_are_accepted() {
    for (frame_type, length) in [
        (FrameType::ListEntries, MAX_CONTROL_PAYLOAD),
        (FrameType::PutData, MAX_DATA_PAYLOAD),
        (FrameType::PutData, MIN_DATA_PAYLOAD),
        (FrameType::PutEnd, 0),
    ] {
        let bytes = raw_header(frame_type.as_u16(), 0, 1, length);
        assert_eq!(
            FrameHeader::decode(&bytes, reader_of(frame_type)),
            Ok(header(frame_type, 1, length))
        );
    }
}

#[test]
fn a_frame_is_cut_from_a_buffer_that_holds_more() {
    let mut buf = encode_frame(FrameType::PutData, 3, b"abc").expect("valid");
    buf.extend_from_slice(&encode_frame(FrameType::PutEnd, 3, b"").expect("valid"));
    let (first, payload, used) = decode_frame(&buf, Side::Server).expect("a whole frame");
    assert_eq!(
        (first.frame_type(), first.tag(), payload, used),
        (FrameType::PutData, 3, &b"abc"[..], 15)
    );
    let (second, payload, used) = decode_frame(&buf[used..], Side::Server).expect("a whole frame");
    assert_eq!((second.frame_type(), payload, used), (FrameType::PutEnd, &b""[..], HEADER_LEN));
}

#[test]
fn a_sender_cannot_encode_a_frame_its_peer_must_refuse() {
    assert!(matches!(encode_frame(FrameType::PutData, 1, b""), Err(FrameError::BadLength { .. })));
    assert!(matches!(encode_frame(FrameType::PutEnd, 1, b"x"), Err(FrameError::BadLength { .. })));
    let big = vec![0; MAX_CONTROL_PAYLOAD as usize + 1];
    assert!(matches!(encode_frame(FrameType::List, 1, &big), Err(FrameError::BadLength { .. })));
}

#[test]
fn frame_errors_say_what_was_wrong_in_words() {
    let wrong = FrameError::WrongDirection { raw_type: 0x8001, reader: Side::Server };
    assert_eq!(
        wrong.to_string(),
        "frame type 0x8001 is one the server sends, but the server is reading it: bit 15 of \
         the type is set exactly on the server's frames"
    );
    let long =
        FrameError::BadLength { frame_type: FrameType::PutData, length: 0, min: 1, max: 1 << 20 };
    assert_eq!(
        long.to_string(),
        "frame DATA (0x0010) announces 0 payload bytes; it must carry 1 to 1048576"
    );
    let none = FrameError::TagNotOpenPut { frame_type: FrameType::PutEnd, tag: 4, open_put: None };
    assert_eq!(none.to_string(), "frame PUT_END (0x0202) carries tag 4, but no put is open");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn every_header_round_trips(header in arb_header()) {
        let bytes = header.encode();
        prop_assert_eq!(FrameHeader::decode(&bytes, reader_of(header.frame_type())), Ok(header));
    }

    #[test]
    fn every_frame_round_trips_and_every_strict_prefix_is_incomplete(
        (frame_type, tag, payload) in arb_frame(),
    ) {
        let bytes = encode_frame(frame_type, tag, &payload).expect("a valid frame");
        let reader = reader_of(frame_type);
        let (header, got, used) = decode_frame(&bytes, reader).expect("a whole frame");
        prop_assert_eq!((header.frame_type(), header.tag(), got, used), (frame_type, tag, &payload[..], bytes.len()));
        for len in 0..bytes.len() {
            prop_assert_eq!(
                decode_frame(&bytes[..len], reader),
                // Until the header is in, only the header's bytes can be asked for.
                Err(FrameError::Incomplete { needed: if len < HEADER_LEN { HEADER_LEN - len } else { bytes.len() - len } })
            );
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_what_decodes_re_encodes(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        for reader in [Side::Client, Side::Server] {
            match decode_frame(&bytes, reader) {
                Ok((header, payload, used)) => {
                    let again = encode_frame(header.frame_type(), header.tag(), payload);
                    prop_assert_eq!(again.as_deref(), Ok(&bytes[..used]));
                }
                Err(FrameError::Incomplete { needed }) => prop_assert!(needed > 0),
                Err(other) => { let _ = other.to_string(); }
            }
        }
        let decoded = [
            Hello::decode(&bytes).map(|m| m.encode()),
            Welcome::decode(&bytes).map(|m| m.encode()),
            ErrorFrame::decode(&bytes).map(|m| m.encode()),
        ];
        for encoded in decoded.into_iter().flatten() {
            prop_assert_eq!(encoded.as_deref(), Ok(&bytes[..]), "one encoding per message");
        }
    }

    #[test]
    fn hello_round_trips(hello in arb_hello()) {
        let bytes = hello.encode().expect("valid");
        prop_assert_eq!(bytes.len(), HELLO_FIXED_LEN + 1 + hello.software.len());
        prop_assert_eq!(Hello::decode(&bytes), Ok(hello));
    }

    #[test]
    fn welcome_round_trips(welcome in arb_welcome()) {
        let bytes = welcome.encode().expect("valid");
        prop_assert_eq!(bytes.len(), WELCOME_FIXED_LEN + 2 + welcome.name.len() + welcome.software.len());
        prop_assert_eq!(Welcome::decode(&bytes), Ok(welcome));
    }

    #[test]
    fn error_frames_round_trip(error in arb_error_frame()) {
        let bytes = error.encode().expect("valid");
        prop_assert_eq!(bytes.len(), ERROR_FIXED_LEN + 2 + error.message.len());
        prop_assert_eq!(ErrorFrame::decode(&bytes), Ok(error));
    }

    #[test]
    fn every_strict_prefix_of_a_message_is_short_and_every_extension_trails(
        error in arb_error_frame(), extra in 1usize..4,
    ) {
        let bytes = error.encode().expect("valid");
        for len in 0..bytes.len() {
            let short = matches!(ErrorFrame::decode(&bytes[..len]), Err(FrameError::ShortPayload { .. }));
            prop_assert!(short, "a prefix of {} bytes is short", len);
        }
        let mut longer = bytes.clone();
        longer.extend(std::iter::repeat_n(0, extra));
        prop_assert_eq!(ErrorFrame::decode(&longer), Err(FrameError::TrailingBytes(extra)));
    }
}

// ---------------------------------------------------------------------------------------
// Payloads: one encoding per message

#[test]
fn the_fixed_parts_have_the_lengths_the_design_gives() {
    assert_eq!(WELCOME_FIXED_LEN, 79);
    assert_eq!(ERROR_FIXED_LEN, 25);
    assert_eq!(hello().encode().expect("valid"), b"\x04\x00\x10securexfer 0.1.0");
}

#[test]
fn a_boolean_other_than_0_or_1_is_malformed() {
    let mut bytes = welcome().encode().expect("valid");
    bytes[2] = 2;
    assert_eq!(Welcome::decode(&bytes), Err(FrameError::NotBool { field: "registered", byte: 2 }));
    let mut bytes = error_frame().encode().expect("valid");
    bytes[3] = 0xff;
    assert_eq!(
        ErrorFrame::decode(&bytes),
        Err(FrameError::NotBool { field: "closes", byte: 0xff })
    );
}

#[test]
fn values_outside_their_tables_are_malformed() {
    let mut bytes = welcome().encode().expect("valid");
    bytes[1] = 3;
    assert_eq!(
        Welcome::decode(&bytes),
        Err(FrameError::UnknownValue { field: "registration", value: 3 })
    );
    let mut bytes = error_frame().encode().expect("valid");
    bytes[4] = 3;
    assert_eq!(
        ErrorFrame::decode(&bytes),
        Err(FrameError::UnknownValue { field: "unit", value: 3 })
    );
    for code in [0u16, 13, 19, 27, 0xffff] {
        let mut bytes = error_frame().encode().expect("valid");
        bytes[..2].copy_from_slice(&code.to_le_bytes());
        assert_eq!(ErrorFrame::decode(&bytes), Err(FrameError::UnknownErrorCode(code)));
    }
}

#[test]
fn an_error_whose_kind_is_not_its_codes_is_malformed() {
    let mut bytes = error_frame().encode().expect("valid");
    assert_eq!(bytes[2], ErrorKind::Permanent.as_u8());
    bytes[2] = ErrorKind::Temporary.as_u8();
    assert_eq!(
        ErrorFrame::decode(&bytes),
        Err(FrameError::KindMismatch {
            code: ErrorCode::QuotaExceeded,
            kind: ErrorKind::Temporary
        })
    );
}

#[test]
fn the_error_codes_are_the_designs() {
    let numbers: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.as_u16()).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 21, 22, 23, 24, 25, 26]);
    assert_eq!(ErrorCode::HashMismatch.to_string(), "26 (hash_mismatch)");
    assert_eq!(ErrorCode::Busy.kind(), ErrorKind::Temporary);
    assert_eq!(ErrorCode::Conflict.kind(), ErrorKind::Permanent);
}

#[test]
fn text_must_be_utf8_without_control_characters_within_its_limit() {
    let mut bytes = hello().encode().expect("valid");
    bytes[3] = 0xff;
    assert_eq!(Hello::decode(&bytes), Err(FrameError::TextNotUtf8 { field: "software" }));
    let tab = Hello { software: "a\tb".into(), ..hello() };
    assert_eq!(tab.encode(), Err(FrameError::TextControl { field: "software", position: 1 }));
    let mut bytes = hello().encode().expect("valid");
    bytes[4] = b'\n';
    assert_eq!(
        Hello::decode(&bytes),
        Err(FrameError::TextControl { field: "software", position: 1 })
    );
    let long = Hello { software: "x".repeat(MAX_SOFTWARE_LEN + 1), ..hello() };
    let too_long = FrameError::TextTooLong { field: "software", len: 65, max: MAX_SOFTWARE_LEN };
    assert_eq!(long.encode(), Err(too_long.clone()));
    let mut raw = vec![4, 0, 65];
    raw.extend_from_slice(&[b'x'; 65]);
    assert_eq!(Hello::decode(&raw), Err(too_long));
    let message = ErrorFrame { message: "é".repeat(513), ..error_frame() };
    assert!(matches!(message.encode(), Err(FrameError::TextTooLong { len: 1026, max: 1024, .. })));
}

// ---------------------------------------------------------------------------------------
// Tags

fn check(tags: &mut TagCheck, frame_type: FrameType, tag: u32) -> Result<(), FrameError> {
    let length = frame_type.payload_rule().bounds().0;
    tags.check(&header(frame_type, tag, length))
}

#[test]
fn a_conversation_with_increasing_tags_passes() {
    let mut tags = TagCheck::new();
    let frames = [
        (FrameType::Hello, 0),
        (FrameType::Register, 1),
        (FrameType::PutBegin, 2),
        (FrameType::PutData, 2),
        (FrameType::PutData, 2),
        (FrameType::PutEnd, 2),
        (FrameType::Commit, 2),
        (FrameType::List, 5),
        (FrameType::PutBegin, 6),
        (FrameType::PutEnd, 6),
        (FrameType::Discard, 6),
        (FrameType::Rm, u32::MAX),
    ];
    for (frame_type, tag) in frames {
        assert_eq!(check(&mut tags, frame_type, tag), Ok(()), "{frame_type} tag {tag}");
    }
    assert_eq!((tags.last(), tags.open_put()), (u32::MAX, None));
}

#[test]
fn a_request_tag_that_does_not_increase_is_malformed() {
    let mut tags = TagCheck::new();
    assert_eq!(
        check(&mut tags, FrameType::List, 0),
        Err(FrameError::TagNotIncreasing { frame_type: FrameType::List, tag: 0, last: 0 })
    );
    check(&mut tags, FrameType::List, 7).expect("first request");
    for tag in [7, 6, 1] {
        assert_eq!(
            check(&mut tags, FrameType::Get, tag),
            Err(FrameError::TagNotIncreasing { frame_type: FrameType::Get, tag, last: 7 })
        );
    }
    assert_eq!(tags.last(), 7, "a refused frame changes nothing");
}

#[test]
fn hello_carries_tag_zero() {
    assert_eq!(
        check(&mut TagCheck::new(), FrameType::Hello, 1),
        Err(FrameError::TagNotZero { frame_type: FrameType::Hello, tag: 1 })
    );
}

#[test]
fn put_body_frames_carry_the_open_puts_tag_and_nothing_else() {
    let mut tags = TagCheck::new();
    let no_put =
        FrameError::TagNotOpenPut { frame_type: FrameType::PutData, tag: 1, open_put: None };
    assert_eq!(check(&mut tags, FrameType::PutData, 1), Err(no_put));
    check(&mut tags, FrameType::PutBegin, 1).expect("a put");
    let wrong =
        FrameError::TagNotOpenPut { frame_type: FrameType::PutData, tag: 2, open_put: Some(1) };
    assert_eq!(check(&mut tags, FrameType::PutData, 2), Err(wrong));
    check(&mut tags, FrameType::PutEnd, 1).expect("the end of the put");
    assert!(check(&mut tags, FrameType::PutData, 1).is_err(), "no data after PUT_END");
    // Another request ends a (refused, dropped) put's body too.
    check(&mut tags, FrameType::PutBegin, 2).expect("a put");
    check(&mut tags, FrameType::List, 3).expect("a request");
    assert!(check(&mut tags, FrameType::PutEnd, 2).is_err(), "the put is no longer open");
}

#[test]
fn server_frames_are_not_the_clients_to_send() {
    assert!(matches!(
        check(&mut TagCheck::new(), FrameType::Welcome, 0),
        Err(FrameError::WrongDirection { raw_type: 0x8001, reader: Side::Server })
    ));
}
