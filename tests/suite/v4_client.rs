//! The client's side of protocol 4: the decisions it makes without a network (which
//! protocol `--protocol` and `known_servers` allow, what a peer's first reply says, which
//! request a server frame answers, tokens, the upgrade proof), then the whole flows
//! through the real binary.

use securexfer::client::trust::Known;
use securexfer::client::v4::negotiate::{
    FirstReply, Plan, Probe, ProtocolChoice, Refusal, classify, plan,
};
use securexfer::client::v4::pending::{Awaited, Pending, Route};
use securexfer::client::v4::token;
use securexfer::protocol::v4::{FrameHeader, FrameType};

const KEY: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
const OTHER: &str = "SHA256:ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs";
const NOW: i64 = 1_796_119_200;
const DAY: i64 = 24 * 60 * 60;

fn key_line() -> Known {
    Known::Key { key: KEY.into(), since: Some(NOW - 10 * DAY) }
}

#[test]
fn a_server_known_to_speak_4_is_never_spoken_3_to() {
    let known = key_line();
    let refused = plan("h:1", ProtocolChoice::Three, Some(&known), None, NOW).unwrap_err();
    assert!(matches!(refused, Refusal::KnownServer { .. }), "{refused}");
    for choice in [ProtocolChoice::Auto, ProtocolChoice::Four] {
        assert_eq!(
            plan("h:1", choice, Some(&known), None, NOW).unwrap(),
            Plan::Speak4 { expected: Some(KEY.into()), may_fall_back: false },
            "{choice:?}: the trusted key, and no fallback"
        );
    }
}

#[test]
fn a_pin_must_agree_with_the_key_already_trusted() {
    let known = key_line();
    let refused = plan("h:1", ProtocolChoice::Auto, Some(&known), Some(OTHER), NOW).unwrap_err();
    assert!(matches!(refused, Refusal::PinDisagrees { .. }), "{refused}");
    assert!(plan("h:1", ProtocolChoice::Auto, Some(&known), Some(KEY), NOW).is_ok());
}

#[test]
fn only_auto_with_an_unknown_server_and_no_pin_may_fall_back_to_3() {
    let auto = plan("h:1", ProtocolChoice::Auto, None, None, NOW).unwrap();
    assert_eq!(auto, Plan::Speak4 { expected: None, may_fall_back: true });
    let four = plan("h:1", ProtocolChoice::Four, None, None, NOW).unwrap();
    assert_eq!(four, Plan::Speak4 { expected: None, may_fall_back: false });
    let pinned = plan("h:1", ProtocolChoice::Auto, None, Some(KEY), NOW).unwrap();
    assert_eq!(pinned, Plan::Speak4 { expected: Some(KEY.into()), may_fall_back: false });
    let three = plan("h:1", ProtocolChoice::Three, None, None, NOW).unwrap();
    assert_eq!(three, Plan::Speak3 { remembered: false });
    let refused = plan("h:1", ProtocolChoice::Three, None, Some(KEY), NOW).unwrap_err();
    assert_eq!(refused, Refusal::PinWithProtocol3);
}

#[test]
fn a_protocol3_server_is_remembered_for_a_day_then_probed_again() {
    let fresh = Known::Protocol3 { at: NOW - DAY + 60 };
    let stale = Known::Protocol3 { at: NOW - DAY - 60 };
    let future = Known::Protocol3 { at: NOW + 60 };
    assert_eq!(
        plan("h:1", ProtocolChoice::Auto, Some(&fresh), None, NOW).unwrap(),
        Plan::Speak3 { remembered: true }
    );
    for (line, why) in [(&stale, "after a day"), (&future, "a time in the future")] {
        assert_eq!(
            plan("h:1", ProtocolChoice::Auto, Some(line), None, NOW).unwrap(),
            Plan::Speak4 { expected: None, may_fall_back: true },
            "{why}: probed again"
        );
    }
    // The line grants nothing: --protocol 4 and a pin still go to protocol 4.
    assert!(matches!(
        plan("h:1", ProtocolChoice::Four, Some(&fresh), None, NOW).unwrap(),
        Plan::Speak4 { may_fall_back: false, .. }
    ));
    assert!(matches!(
        plan("h:1", ProtocolChoice::Auto, Some(&fresh), Some(KEY), NOW).unwrap(),
        Plan::Speak4 { may_fall_back: false, .. }
    ));
}

#[test]
fn only_a_tls_record_byte_makes_a_peer_a_tls_peer() {
    assert_eq!(classify(FirstReply::Byte(0x16)), Probe::Tls, "handshake");
    assert_eq!(classify(FirstReply::Byte(0x15)), Probe::Tls, "alert: an error, not protocol 3");
    // Protocol 3's answers start with the version byte, 3.
    for b in [0x03, 0x00, 0x17, 0xff] {
        assert_eq!(classify(FirstReply::Byte(b)), Probe::Protocol3Only, "0x{b:02x}");
    }
    assert_eq!(classify(FirstReply::Closed), Probe::Protocol3Only);
    assert_eq!(classify(FirstReply::Silent), Probe::Protocol3Only);
}

fn header(frame_type: FrameType, tag: u32, length: u32) -> FrameHeader {
    FrameHeader::new(frame_type, tag, length).unwrap()
}

#[test]
fn answers_go_to_the_oldest_request_by_tag_and_type() {
    let mut pending = Pending::default();
    pending.push(Awaited::of(FrameType::PutBegin, 1).unwrap(), "put 1");
    pending.push(Awaited::of(FrameType::Commit, 1).unwrap(), "commit 1");
    pending.push(Awaited::of(FrameType::PutBegin, 2).unwrap(), "put 2");
    let (route, to) = pending.route(&header(FrameType::PutReceived, 1, 41)).unwrap();
    assert_eq!((route, to), (Route::Answer, Some("put 1")));
    // An ERROR with the oldest request's tag answers it.
    let (route, to) = pending.route(&header(FrameType::Error, 1, 25)).unwrap();
    assert_eq!((route, to), (Route::Answer, Some("commit 1")));
    assert_eq!(pending.len(), 1);
}

#[test]
fn a_frame_out_of_turn_is_the_servers_protocol_error() {
    let mut pending = Pending::default();
    pending.push(Awaited::of(FrameType::PutBegin, 1).unwrap(), ());
    pending.push(Awaited::of(FrameType::Commit, 1).unwrap(), ());
    for (frame, why) in [
        (header(FrameType::Committed, 1, 17), "the commit's answer before the put's"),
        (header(FrameType::PutReceived, 2, 41), "a tag nobody used"),
        (header(FrameType::Error, 2, 25), "an ERROR for another tag"),
        (header(FrameType::Registered, 1, 17), "the answer to another request type"),
        (header(FrameType::GetData, 1, 1), "data nobody asked for"),
    ] {
        let e = pending.route(&frame).unwrap_err();
        assert_eq!(e.got, frame.frame_type(), "{why}");
        assert_eq!(pending.len(), 2, "{why}: nothing is taken off the queue");
    }
    let mut idle: Pending<()> = Pending::default();
    assert!(idle.route(&header(FrameType::Welcome, 0, 79)).is_err(), "nothing was due");
}

#[test]
fn a_tag_zero_error_is_about_the_connection() {
    let mut pending = Pending::default();
    pending.push(Awaited::of(FrameType::PutBegin, 3).unwrap(), ());
    let (route, to) = pending.route(&header(FrameType::Error, 0, 25)).unwrap();
    assert_eq!((route, to), (Route::Connection, None));
    assert_eq!(pending.len(), 1);
    // Before WELCOME, a tag-0 ERROR is HELLO's answer.
    let mut hello = Pending::default();
    hello.push(Awaited::of(FrameType::Hello, 0).unwrap(), "hello");
    assert_eq!(
        hello.route(&header(FrameType::Error, 0, 25)).unwrap(),
        (Route::Answer, Some("hello"))
    );
}

#[test]
fn tokens_are_sxi_and_26_lowercase_base32_characters() {
    // RFC 4648 base32 of the bytes 0..16 and of 16 bytes 0xff, lowercase, unpadded.
    let counting: [u8; 16] = std::array::from_fn(|i| i as u8);
    assert_eq!(token::parse("sxi-aaaqeayeaudaocajbifqydiob4").unwrap(), counting);
    assert_eq!(token::format(&counting), "sxi-aaaqeayeaudaocajbifqydiob4");
    assert_eq!(token::parse(" sxi-77777777777777777777777774\n").unwrap(), [0xff; 16]);
    for bad in [
        "aaaqeayeaudaocajbifqydiob4",
        "sxi-aaaqeayeaudaocajbifqydiob",
        "sxi-aaaqeayeaudaocajbifqydiob44",
        "sxi-AAAQEAYEAUDAOCAJBIFQYDIOB4",
        "sxi-aaaqeayeaudaocajbifqydiob1",
        "sxi-77777777777777777777777777",
    ] {
        assert!(token::parse(bad).is_err(), "{bad}");
    }
}
