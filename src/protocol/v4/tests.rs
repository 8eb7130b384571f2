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

// ---------------------------------------------------------------------------------------
// Register, upgrade, put, commit: one encoding per message

/// Any UTF-8, control characters included: the codec leaves name rules to the receiver.
fn arb_name(max_chars: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max_chars).prop_map(|c| c.into_iter().collect())
}

fn arb_register() -> impl Strategy<Value = Register> {
    (arb_name(60), prop::option::of(any::<[u8; TOKEN_LEN]>()))
        .prop_map(|(name, token)| Register { name, token })
}

fn arb_upgrade() -> impl Strategy<Value = Upgrade> {
    (any::<[u8; 16]>(), arb_name(60), prop::collection::vec(any::<u8>(), 128))
        .prop_map(|(id, name, signature)| Upgrade { client_id: ClientId(id), name, signature })
}

fn arb_put_begin() -> impl Strategy<Value = PutBegin> {
    (any::<bool>(), prop::option::of(0..UNKNOWN_SIZE), any::<u64>(), any::<Hash>(), any::<i64>())
        .prop_flat_map(|(no_clobber, size, offset, hash, mtime_ns)| {
            // Only consistent fields: an offset within a known size, a hash only with it.
            let offset = match size {
                Some(size) if size > 0 => offset % (size + 1),
                _ => 0,
            };
            let prefix_hash = if offset == 0 { NO_HASH } else { hash };
            arb_name(300).prop_map(move |path| PutBegin {
                no_clobber,
                size,
                offset,
                prefix_hash,
                mtime_ns,
                path,
            })
        })
}

proptest! {
    #[test]
    fn register_round_trips(register in arb_register()) {
        prop_assume!(register.name.len() <= 255);
        let bytes = register.encode().expect("valid");
        prop_assert_eq!(Register::decode(&bytes), Ok(register));
    }

    #[test]
    fn registered_round_trips(id in any::<[u8; 16]>(), name in arb_name(60)) {
        prop_assume!(name.len() <= 255);
        let registered = Registered { client_id: ClientId(id), name };
        let bytes = registered.encode().expect("valid");
        prop_assert_eq!(bytes.len(), 16 + 1 + registered.name.len());
        prop_assert_eq!(Registered::decode(&bytes), Ok(registered));
    }

    #[test]
    fn upgrade_round_trips(upgrade in arb_upgrade()) {
        prop_assume!(upgrade.name.len() <= 255);
        let bytes = upgrade.encode().expect("valid");
        prop_assert_eq!(Upgrade::decode(&bytes), Ok(upgrade));
    }

    #[test]
    fn put_begin_round_trips(put in arb_put_begin()) {
        let bytes = put.encode().expect("valid");
        prop_assert_eq!(bytes.len(), PUT_BEGIN_FIXED_LEN + 2 + put.path.len());
        prop_assert_eq!(PutBegin::decode(&bytes), Ok(put));
    }

    #[test]
    fn answers_round_trip(size in any::<u64>(), hash in any::<Hash>(), flag in any::<bool>(), at in any::<i64>()) {
        let received = PutReceived { size, hash, replaces: flag };
        prop_assert_eq!(received.encode().len(), PUT_RECEIVED_LEN);
        prop_assert_eq!(PutReceived::decode(&received.encode()), Ok(received));
        let committed = Committed { generation: size, stored_at: at, kept_version: flag };
        prop_assert_eq!(committed.encode().len(), COMMITTED_LEN);
        prop_assert_eq!(Committed::decode(&committed.encode()), Ok(committed));
        let commit = Commit { hash };
        prop_assert_eq!(Commit::decode(&commit.encode()), Ok(commit));
    }

    #[test]
    fn new_payloads_refuse_every_strict_prefix_and_extension(
        put in arb_put_begin(), register in arb_register(), extra in 1usize..4,
    ) {
        prop_assume!(register.name.len() <= 255);
        type Decode = fn(&[u8]) -> Result<(), FrameError>;
        let cases: [(Vec<u8>, Decode); 3] = [
            (put.encode().expect("valid"), |b| PutBegin::decode(b).map(drop)),
            (register.encode().expect("valid"), |b| Register::decode(b).map(drop)),
            (PutReceived { size: 1, hash: NO_HASH, replaces: false }.encode(), |b| PutReceived::decode(b).map(drop)),
        ];
        for (bytes, decode) in cases {
            for len in 0..bytes.len() {
                prop_assert!(decode(&bytes[..len]).is_err(), "a prefix of {} bytes", len);
            }
            let mut longer = bytes.clone();
            longer.extend(std::iter::repeat_n(0, extra));
            prop_assert!(decode(&longer).is_err());
        }
    }
}

fn put_begin() -> PutBegin {
    PutBegin {
        no_clobber: false,
        size: Some(10),
        offset: 0,
        prefix_hash: NO_HASH,
        mtime_ns: 1_700_000_000_000_000_000,
        path: "a/b.txt".into(),
    }
}

#[test]
fn the_new_fixed_parts_have_the_lengths_the_design_gives() {
    assert_eq!(PUT_BEGIN_FIXED_LEN, 57);
    assert_eq!(PUT_RECEIVED_LEN, 41);
    assert_eq!(COMMITTED_LEN, 17);
    assert_eq!(UPGRADE_CONTEXT.len(), 21);
    let unknown = PutBegin { size: None, ..put_begin() }.encode().expect("valid");
    assert_eq!(&unknown[1..9], &[0xff; 8], "an unknown size is u64::MAX");
    assert_eq!(PutBegin::decode(&unknown).expect("valid").data_len(), None);
    assert_eq!(put_begin().data_len(), Some(10));
}

#[test]
fn a_put_whose_fields_contradict_each_other_is_malformed() {
    let contradictions = [
        PutBegin { offset: 11, prefix_hash: [1; 32], ..put_begin() },
        PutBegin { size: None, offset: 1, prefix_hash: [1; 32], ..put_begin() },
        PutBegin { prefix_hash: [1; 32], ..put_begin() },
    ];
    // u64::MAX on the wire is "unknown", so only the encoder can see this contradiction.
    let max = PutBegin { size: Some(UNKNOWN_SIZE), ..put_begin() };
    assert!(matches!(max.encode(), Err(FrameError::Inconsistent(_))));
    for put in contradictions {
        assert!(matches!(put.encode(), Err(FrameError::Inconsistent(_))), "{put:?}");
        // The same bytes built by hand are refused by the decoder.
        let mut raw = vec![0u8];
        raw.extend_from_slice(&put.size.unwrap_or(UNKNOWN_SIZE).to_le_bytes());
        raw.extend_from_slice(&put.offset.to_le_bytes());
        raw.extend_from_slice(&put.prefix_hash);
        raw.extend_from_slice(&put.mtime_ns.to_le_bytes());
        raw.extend_from_slice(&[1, 0, b'x']);
        let refused = PutBegin::decode(&raw);
        assert!(matches!(refused, Err(FrameError::Inconsistent(_))), "{put:?}: {refused:?}");
    }
    let resumed = PutBegin { offset: 10, prefix_hash: [1; 32], ..put_begin() };
    assert_eq!(PutBegin::decode(&resumed.encode().expect("valid")), Ok(resumed.clone()));
    assert_eq!(resumed.data_len(), Some(0));
    let mut bytes = put_begin().encode().expect("valid");
    bytes[0] = 0x03;
    assert_eq!(
        PutBegin::decode(&bytes),
        Err(FrameError::ReservedBits { field: "options", bits: 0x02 })
    );
}

#[test]
fn a_token_is_absent_or_sixteen_bytes_and_a_signature_is_128() {
    let register = Register { name: "alice".into(), token: None };
    assert_eq!(register.encode().expect("valid"), b"\x05alice\x00");
    let mut bad = b"\x05alice\x03abc".to_vec();
    assert_eq!(
        Register::decode(&bad),
        Err(FrameError::BadBinLength { field: "token", len: 3, allowed: "0 or 16" })
    );
    bad.truncate(6);
    bad.push(16);
    bad.extend_from_slice(&[7; 16]);
    assert_eq!(Register::decode(&bad).expect("valid").token, Some([7; 16]));
    let upgrade =
        Upgrade { client_id: ClientId([1; 16]), name: "a".into(), signature: vec![0; 127] };
    assert!(matches!(upgrade.encode(), Err(FrameError::BadBinLength { len: 127, .. })));
    let mut bytes = Upgrade { signature: vec![0; 128], ..upgrade }.encode().expect("valid");
    assert_eq!(bytes.len(), 16 + 2 + 2 + 128);
    bytes[18..20].copy_from_slice(&129u16.to_le_bytes());
    bytes.push(0);
    assert!(matches!(Upgrade::decode(&bytes), Err(FrameError::BadBinLength { len: 129, .. })));
}

#[test]
fn names_are_utf8_but_their_rules_are_the_receivers() {
    // A control character in a name is carried (the server answers name_refused).
    let register = Register { name: "a\tb".into(), token: None };
    assert_eq!(Register::decode(&register.encode().expect("valid")), Ok(register));
    assert_eq!(Register::decode(b"\x01\xff\x00"), Err(FrameError::TextNotUtf8 { field: "name" }));
    let long = Register { name: "x".repeat(256), token: None };
    assert!(matches!(long.encode(), Err(FrameError::TextTooLong { len: 256, .. })));
}

#[test]
fn the_upgrade_statement_is_the_designs_concatenation() {
    let id = ClientId([9; 16]);
    let m = upgrade_statement(&[1; 32], &[2; 32], &[3; 32], &id, "bob").expect("short name");
    assert_eq!(m.len(), 21 + 32 * 3 + 16 + 1 + 3);
    assert_eq!(&m[..21], b"securexfer/4 upgrade\0");
    assert_eq!(&m[21..53], &[1; 32]);
    assert_eq!(&m[53..85], &[2; 32]);
    assert_eq!(&m[85..117], &[3; 32]);
    assert_eq!(&m[117..133], &[9; 16]);
    assert_eq!(&m[133..], b"\x03bob");
    // Each input changes the statement.
    let other = [
        upgrade_statement(&[0; 32], &[2; 32], &[3; 32], &id, "bob"),
        upgrade_statement(&[1; 32], &[0; 32], &[3; 32], &id, "bob"),
        upgrade_statement(&[1; 32], &[2; 32], &[0; 32], &id, "bob"),
        upgrade_statement(&[1; 32], &[2; 32], &[3; 32], &ClientId([0; 16]), "bob"),
        upgrade_statement(&[1; 32], &[2; 32], &[3; 32], &id, "bo"),
    ];
    for o in other {
        assert_ne!(o.as_deref(), Some(&m[..]));
    }
    assert_eq!(upgrade_statement(&[1; 32], &[2; 32], &[3; 32], &id, &"x".repeat(256)), None);
}

// ---------------------------------------------------------------------------------------
// Downloads, listings, removal: one encoding per message

fn arb_flags() -> impl Strategy<Value = CopyFlags> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(hash_known, unverified, protocol3)| {
        CopyFlags { hash_known, unverified, protocol3 }
    })
}

/// A hash consistent with the flags: zeros unless the hash is known.
fn hash_for(flags: CopyFlags, hash: Hash) -> Hash {
    if flags.hash_known { hash } else { NO_HASH }
}

fn arb_entry() -> impl Strategy<Value = ListEntry> {
    (
        any::<bool>(),
        arb_flags(),
        (any::<u64>(), any::<i64>(), any::<i64>(), any::<u64>(), any::<u16>()),
        any::<Hash>(),
        arb_name(40),
    )
        .prop_map(
            |(folder, flags, (size, mtime_ns, stored_at, generation, versions), hash, path)| {
                if folder {
                    ListEntry {
                        kind: EntryKind::Folder,
                        flags: CopyFlags::default(),
                        size: 0,
                        mtime_ns,
                        stored_at,
                        generation: 0,
                        versions,
                        hash: NO_HASH,
                        path,
                    }
                } else {
                    let hash = hash_for(flags, hash);
                    ListEntry {
                        kind: EntryKind::File,
                        flags,
                        size,
                        mtime_ns,
                        stored_at,
                        generation,
                        versions,
                        hash,
                        path,
                    }
                }
            },
        )
}

fn arb_get_begin() -> impl Strategy<Value = GetBegin> {
    (any::<[u64; 2]>(), any::<[i64; 2]>(), arb_flags(), any::<Hash>()).prop_map(
        |([size, generation], [mtime_ns, stored_at], flags, hash)| GetBegin {
            size,
            generation,
            mtime_ns,
            stored_at,
            flags,
            hash: hash_for(flags, hash),
        },
    )
}

fn arb_get() -> impl Strategy<Value = Get> {
    (any::<u64>(), any::<u64>(), arb_name(300)).prop_map(|(offset, generation, path)| Get {
        offset: if generation == 0 { 0 } else { offset },
        generation,
        path,
    })
}

proptest! {
    #[test]
    fn list_and_rm_round_trip(recursive in any::<bool>(), path in arb_name(300)) {
        let list = List { recursive, path: path.clone() };
        let bytes = list.encode().expect("valid");
        prop_assert_eq!(bytes.len(), LIST_FIXED_LEN + 2 + path.len());
        prop_assert_eq!(List::decode(&bytes), Ok(list));
        let rm = Rm { recursive, path: path.clone() };
        let bytes = rm.encode().expect("valid");
        prop_assert_eq!(bytes.len(), RM_FIXED_LEN + 2 + path.len());
        prop_assert_eq!(Rm::decode(&bytes), Ok(rm));
    }

    #[test]
    fn list_entries_round_trip(entries in prop::collection::vec(arb_entry(), 1..20)) {
        let list = ListEntries { entries };
        let bytes = list.encode().expect("valid");
        let expected: usize = 2 + list.entries.iter().map(ListEntry::encoded_len).sum::<usize>();
        prop_assert_eq!(bytes.len(), expected);
        prop_assert_eq!(ListEntries::decode(&bytes), Ok(list));
    }

    #[test]
    fn get_and_its_answers_round_trip(get in arb_get(), begin in arb_get_begin(), hash in any::<Hash>(), n in any::<[u64; 6]>()) {
        let bytes = get.encode().expect("valid");
        prop_assert_eq!(bytes.len(), GET_FIXED_LEN + 2 + get.path.len());
        prop_assert_eq!(Get::decode(&bytes), Ok(get));
        let bytes = begin.encode().expect("valid");
        prop_assert_eq!(bytes.len(), GET_BEGIN_LEN);
        prop_assert_eq!(GetBegin::decode(&bytes), Ok(begin));
        let end = GetEnd { hash };
        prop_assert_eq!(end.encode().len(), GET_END_LEN);
        prop_assert_eq!(GetEnd::decode(&end.encode()), Ok(end));
        let list_end = ListEnd {
            entries: n[0], bytes: n[1], bytes_used: n[2], bytes_quota: n[3], files_used: n[4],
            files_quota: n[5],
        };
        prop_assert_eq!(list_end.encode().len(), LIST_END_LEN);
        prop_assert_eq!(ListEnd::decode(&list_end.encode()), Ok(list_end));
        let removed = Removed { files: n[0], bytes: n[1], kept: n[2] };
        prop_assert_eq!(removed.encode().len(), REMOVED_LEN);
        prop_assert_eq!(Removed::decode(&removed.encode()), Ok(removed));
    }

    #[test]
    fn fetch_payloads_refuse_every_strict_prefix_and_extension(
        get in arb_get(), begin in arb_get_begin(), entries in prop::collection::vec(arb_entry(), 1..4),
        path in arb_name(40), extra in 1usize..4,
    ) {
        type Decode = fn(&[u8]) -> Result<(), FrameError>;
        let cases: [(Vec<u8>, Decode); 8] = [
            (List { recursive: true, path: path.clone() }.encode().expect("valid"), |b| List::decode(b).map(drop)),
            (ListEntries { entries }.encode().expect("valid"), |b| ListEntries::decode(b).map(drop)),
            (ListEnd { entries: 1, bytes: 2, bytes_used: 3, bytes_quota: 4, files_used: 5, files_quota: 6 }.encode(), |b| ListEnd::decode(b).map(drop)),
            (get.encode().expect("valid"), |b| Get::decode(b).map(drop)),
            (begin.encode().expect("valid"), |b| GetBegin::decode(b).map(drop)),
            (GetEnd { hash: [5; 32] }.encode(), |b| GetEnd::decode(b).map(drop)),
            (Rm { recursive: false, path }.encode().expect("valid"), |b| Rm::decode(b).map(drop)),
            (Removed { files: 1, bytes: 2, kept: 1 }.encode(), |b| Removed::decode(b).map(drop)),
        ];
        for (bytes, decode) in cases {
            for len in 0..bytes.len() {
                prop_assert!(decode(&bytes[..len]).is_err(), "a prefix of {} bytes", len);
            }
            let mut longer = bytes.clone();
            longer.extend(std::iter::repeat_n(0, extra));
            prop_assert!(decode(&longer).is_err());
        }
    }
}

fn file_entry(path: &str) -> ListEntry {
    ListEntry {
        kind: EntryKind::File,
        flags: CopyFlags { hash_known: true, unverified: false, protocol3: false },
        size: 5,
        mtime_ns: 1,
        stored_at: 2,
        generation: 3,
        versions: 1,
        hash: [9; 32],
        path: path.into(),
    }
}

#[test]
fn the_fetch_fixed_parts_have_the_lengths_the_design_gives() {
    assert_eq!(LIST_ENTRY_FIXED_LEN, 70, "an entry is 70 bytes plus its path");
    assert_eq!(LIST_END_LEN, 48);
    assert_eq!(GET_FIXED_LEN, 16);
    assert_eq!(GET_BEGIN_LEN, 65);
    assert_eq!(GET_END_LEN, 32);
    assert_eq!(REMOVED_LEN, 24);
    assert_eq!(file_entry("abc").encoded_len(), 73);
}

#[test]
fn listing_entries_that_contradict_themselves_are_malformed() {
    let bad = [
        ListEntry { flags: CopyFlags::default(), ..file_entry("a") },
        ListEntry { kind: EntryKind::Folder, ..file_entry("a") },
        ListEntry {
            kind: EntryKind::Folder,
            flags: CopyFlags::default(),
            hash: NO_HASH,
            size: 0,
            ..file_entry("a")
        },
    ];
    for entry in bad {
        let list = ListEntries { entries: vec![entry.clone()] };
        assert!(matches!(list.encode(), Err(FrameError::Inconsistent(_))), "{entry:?}");
    }
    // The same by hand: a hash with the "hash known" flag clear.
    let mut bytes = ListEntries { entries: vec![file_entry("a")] }.encode().unwrap();
    bytes[3] = 0;
    assert!(matches!(ListEntries::decode(&bytes), Err(FrameError::Inconsistent(_))));
    bytes[3] = 0x08;
    assert_eq!(
        ListEntries::decode(&bytes),
        Err(FrameError::ReservedBits { field: "flags", bits: 0x08 })
    );
    bytes[3] = 1;
    bytes[2] = 3;
    assert_eq!(
        ListEntries::decode(&bytes),
        Err(FrameError::UnknownValue { field: "kind", value: 3 })
    );
    assert!(matches!(ListEntries::decode(&[0, 0]), Err(FrameError::Inconsistent(_))), "empty");
    assert!(ListEntries { entries: vec![] }.encode().is_err());
}

#[test]
fn a_list_entries_frame_is_packed_to_the_control_limit_and_no_further() {
    let long = "x".repeat(1024);
    let per = file_entry(&long).encoded_len();
    let fits = (MAX_CONTROL_PAYLOAD as usize - 2) / per;
    let full = ListEntries { entries: vec![file_entry(&long); fits] };
    assert!(full.encode().expect("fits").len() <= MAX_CONTROL_PAYLOAD as usize);
    let over = ListEntries { entries: vec![file_entry(&long); fits + 1] };
    assert!(over.encode().is_err());
}

#[test]
fn a_resumed_get_names_its_generation() {
    let get = Get { offset: 10, generation: 0, path: "a".into() };
    assert!(matches!(get.encode(), Err(FrameError::Inconsistent(_))));
    let mut bytes = Get { generation: 4, ..get }.encode().unwrap();
    bytes[8..16].copy_from_slice(&0u64.to_le_bytes());
    assert!(matches!(Get::decode(&bytes), Err(FrameError::Inconsistent(_))));
}

#[test]
fn a_resume_state_round_trips_and_nothing_kept_is_all_zeros() {
    let kept = ResumeState {
        present: true,
        size: 1 << 30,
        durable: 1 << 29,
        prefix_hash: [7; 32],
        mtime_ns: 1_700_000_000_123_456_789,
        expires_at: 1_700_086_400,
    };
    let bytes = kept.encode().expect("valid");
    assert_eq!(bytes.len(), RESUME_STATE_LEN);
    assert_eq!(ResumeState::decode(&bytes), Ok(kept.clone()));
    let nothing = ResumeState::NOTHING.encode().expect("valid");
    assert_eq!(nothing, vec![0u8; RESUME_STATE_LEN]);
    // An absent state with a field set, and a durable length past the size, are refused
    // by both sides of the codec.
    for bad in [
        ResumeState { present: false, ..kept.clone() },
        ResumeState { durable: kept.size + 1, ..kept.clone() },
    ] {
        assert!(matches!(bad.encode(), Err(FrameError::Inconsistent(_))), "{bad:?}");
        let mut raw = kept.encode().expect("valid");
        raw[0] = u8::from(bad.present);
        raw[9..17].copy_from_slice(&bad.durable.to_le_bytes());
        assert!(matches!(ResumeState::decode(&raw), Err(FrameError::Inconsistent(_))));
    }
    assert!(ResumeState::decode(&bytes[..RESUME_STATE_LEN - 1]).is_err());
}

#[test]
fn a_resume_query_carries_one_path() {
    let query = ResumeQuery { path: "backup.tar".into() };
    let bytes = query.encode().expect("valid");
    assert_eq!(ResumeQuery::decode(&bytes), Ok(query));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(ResumeQuery::decode(&longer).is_err());
}
