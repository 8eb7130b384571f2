//! [`check_v4_frames`]: protocol 4's frame codec on arbitrary bytes, read as a stream of
//! frames by each side in turn.

use securexfer::protocol::v4::{
    Commit, Committed, ErrorFrame, FrameError, FrameHeader, FrameType, Get, GetBegin, GetEnd,
    HEADER_LEN, Hello, List, ListEnd, ListEntries, PutBegin, PutReceived, Register, Registered,
    Removed, ResumeQuery, ResumeState, Rm, Side, TagCheck, Upgrade, Welcome, decode_frame,
    encode_frame,
};

/// Reads `data` as the frames a server and then a client would receive, and checks:
///
/// - nothing panics, and every error has a message;
/// - a frame that decodes re-encodes to exactly its bytes, and its payload, when it is a
///   message with fields that decodes, re-encodes to exactly the payload;
/// - every strict prefix of a decoded frame is `Incomplete`, asking for the rest of the
///   header and then the rest of the frame;
/// - a header that is refused is refused from its 12 bytes alone, with no payload;
/// - `Incomplete { needed }` asks for at least one byte, and once the header is in, that
///   many more bytes make a whole frame;
/// - the tag rules never panic, and a refused frame leaves their state as it was.
///
/// # Panics
/// When an invariant breaks (that is the point).
pub fn check_v4_frames(data: &[u8]) {
    for reader in [Side::Server, Side::Client] {
        let mut tags = TagCheck::new();
        let mut rest = data;
        loop {
            match decode_frame(rest, reader) {
                Ok((header, payload, used)) => {
                    check_frame(&rest[..used], &header, payload, reader);
                    if reader == Side::Server {
                        check_tags(&mut tags, &header);
                    }
                    rest = &rest[used..];
                }
                Err(FrameError::Incomplete { needed }) => {
                    check_incomplete(rest, needed, reader);
                    break;
                }
                Err(error) => {
                    check_refused_from_header(rest, &error, reader);
                    break;
                }
            }
        }
    }
}

fn check_frame(bytes: &[u8], header: &FrameHeader, payload: &[u8], reader: Side) {
    let again = encode_frame(header.frame_type(), header.tag(), payload);
    assert_eq!(again.as_deref(), Ok(bytes), "a decoded frame re-encodes as it came");
    for len in 0..bytes.len() {
        let needed = if len < HEADER_LEN { HEADER_LEN - len } else { bytes.len() - len };
        assert_eq!(
            decode_frame(&bytes[..len], reader),
            Err(FrameError::Incomplete { needed }),
            "a strict prefix of {len} bytes of a {}-byte frame",
            bytes.len()
        );
    }
    let reencoded = match header.frame_type() {
        FrameType::Hello => Hello::decode(payload).map(|m| m.encode()),
        FrameType::Welcome => Welcome::decode(payload).map(|m| m.encode()),
        FrameType::Error => ErrorFrame::decode(payload).map(|m| m.encode()),
        FrameType::Register => Register::decode(payload).map(|m| m.encode()),
        FrameType::Registered => Registered::decode(payload).map(|m| m.encode()),
        FrameType::Upgrade => Upgrade::decode(payload).map(|m| m.encode()),
        FrameType::PutBegin => PutBegin::decode(payload).map(|m| m.encode()),
        FrameType::PutReceived => PutReceived::decode(payload).map(|m| Ok(m.encode())),
        FrameType::Commit => Commit::decode(payload).map(|m| Ok(m.encode())),
        FrameType::Committed => Committed::decode(payload).map(|m| Ok(m.encode())),
        FrameType::List => List::decode(payload).map(|m| m.encode()),
        FrameType::ListEntries => ListEntries::decode(payload).map(|m| m.encode()),
        FrameType::ListEnd => ListEnd::decode(payload).map(|m| Ok(m.encode())),
        FrameType::Get => Get::decode(payload).map(|m| m.encode()),
        FrameType::GetBegin => GetBegin::decode(payload).map(|m| m.encode()),
        FrameType::GetEnd => GetEnd::decode(payload).map(|m| Ok(m.encode())),
        FrameType::Rm => Rm::decode(payload).map(|m| m.encode()),
        FrameType::Removed => Removed::decode(payload).map(|m| Ok(m.encode())),
        FrameType::ResumeQuery => ResumeQuery::decode(payload).map(|m| m.encode()),
        FrameType::ResumeState => ResumeState::decode(payload).map(|m| m.encode()),
        _ => return,
    };
    match reencoded {
        Ok(encoded) => assert_eq!(encoded.as_deref(), Ok(payload), "one encoding per message"),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

fn check_tags(tags: &mut TagCheck, header: &FrameHeader) {
    let before = tags.clone();
    if let Err(error) = tags.check(header) {
        assert_eq!(*tags, before, "a refused frame changes the tag state: {error}");
    }
}

fn check_incomplete(rest: &[u8], needed: usize, reader: Side) {
    assert!(needed > 0, "an incomplete frame needs at least one more byte");
    let mut longer = rest.to_vec();
    longer.resize(rest.len() + needed, 0);
    let result = decode_frame(&longer, reader);
    if rest.len() >= HEADER_LEN {
        assert!(result.is_ok(), "{needed} more bytes make a whole frame: {result:?}");
    } else {
        assert_eq!(longer.len(), HEADER_LEN, "before the header is in, only it is asked for");
    }
}

fn check_refused_from_header(rest: &[u8], error: &FrameError, reader: Side) {
    assert!(!error.to_string().is_empty());
    assert!(rest.len() >= HEADER_LEN, "a refusal before the header was complete: {error}");
    assert_eq!(
        decode_frame(&rest[..HEADER_LEN], reader).as_ref(),
        Err(error),
        "a refused header is refused from its 12 bytes alone"
    );
}
