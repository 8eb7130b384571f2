//! Replays the fuzz corpora in `fuzz/corpus/<target>/` through the checks the fuzz targets
//! run (the harness in `fuzz/harness/`, included here as it is there), so that CI re-tests
//! every input the fuzzer kept and every crash it once found, without cargo-fuzz or a
//! nightly compiler.

#[path = "../../fuzz/harness/mod.rs"]
mod harness;

use harness::{check_decode, check_session, check_v4_frames, check_v4_session};
use std::path::{Path, PathBuf};

/// The files of one target's corpus, in name order. An empty or missing corpus fails:
/// it would make the replay pass while testing nothing.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} cannot be read: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    files
}

/// Runs `check` on every input, naming the input that fails.
fn replay(target: &str, check: fn(&[u8])) {
    for path in corpus(target) {
        let bytes = std::fs::read(&path).expect("a corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| check(&bytes)) {
            eprintln!(
                "corpus input {} fails (reproduce: cargo fuzz run {target} {})",
                path.display(),
                path.display()
            );
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn every_decode_request_corpus_input_passes_the_codec_checks() {
    replay("decode_request", check_decode);
}

#[test]
fn every_server_session_corpus_input_passes_the_session_checks() {
    replay("server_session", check_session);
}

#[test]
fn every_v4_frames_corpus_input_passes_the_frame_checks() {
    replay("v4_frames", check_v4_frames);
}

#[test]
fn every_v4_session_corpus_input_passes_the_state_machine_checks() {
    replay("v4_session", check_v4_session);
}

/// The v4_session seeds reach what they are named for: a whole conversation runs to its
/// end, and each breach closes (`fuzz/seeds/make_v4_session_seeds.py`).
#[test]
fn the_v4_session_seeds_reach_the_states_they_are_named_for() {
    use securexfer::protocol::ClientId;
    use securexfer::protocol::v4::{Side, decode_frame};
    use securexfer::server::v4::{Admit, Machine, Request};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/v4_session");
    let seeds = [
        ("register-put-commit", false),
        ("registered-at-hello", false),
        ("data-past-size", true),
        ("short-put-end", true),
        ("before-hello", true),
        ("resume-query-not-served", false), // served since resuming was: named before it was
        ("list-get-rm", false),
    ];
    for (seed, closes) in seeds {
        let bytes = std::fs::read(dir.join(format!("seed-{seed}"))).expect("the seed");
        let (mut machine, mut rest, mut closed) = (Machine::new(), &bytes[..], None);
        while let Ok((header, payload, used)) = decode_frame(rest, Side::Server) {
            rest = &rest[used..];
            let now = std::time::Instant::now();
            let request = match machine.header(&header) {
                Admit::Close(error) => Request::Close(error),
                Admit::Control => machine.control(&header, payload, now),
                Admit::Data | Admit::Drop => continue,
            };
            match request {
                Request::Close(error) => closed = closed.or(Some(error.message)),
                Request::Hello(hello) if hello.software.len() % 2 == 1 => {
                    machine.registered(ClientId([1; 16]))
                }
                Request::Register(_) => machine.registered(ClientId([1; 16])),
                Request::PutBegin(put) => machine.put_accepted(header.tag(), put.size),
                _ => {}
            }
        }
        assert!(rest.is_empty(), "{seed}: the seed decodes to its last byte");
        assert_eq!(closed.is_some(), closes, "{seed}: {closed:?}");
    }
}

/// The seed conversations of the v4 corpus are what they say: every frame of each decodes,
/// read by the side it is meant for, and the client's frames keep the tag rules, so the
/// corpus starts from valid frames as well as broken ones (`fuzz/seeds/make_v4_seeds.py`).
#[test]
fn the_v4_seed_conversations_decode_to_the_last_byte() {
    use securexfer::protocol::v4::{Side, TagCheck, decode_frame};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/v4_frames");
    for (seed, reader, frames) in [
        ("seed-client-conversation", Side::Server, 8),
        ("seed-server-conversation", Side::Client, 6),
        ("seed-fetch-client", Side::Server, 4),
        ("seed-fetch-server", Side::Client, 6),
    ] {
        let bytes = std::fs::read(dir.join(seed)).expect("a seed file");
        let (mut rest, mut count, mut tags) = (&bytes[..], 0, TagCheck::new());
        while !rest.is_empty() {
            let (header, _, used) =
                decode_frame(rest, reader).unwrap_or_else(|e| panic!("{seed}: {e}"));
            if reader == Side::Server {
                tags.check(&header).unwrap_or_else(|e| panic!("{seed}: {e}"));
            }
            rest = &rest[used..];
            count += 1;
        }
        assert_eq!(count, frames, "{seed}");
    }
}

/// Each broken seed of the v4 corpus is refused, by the side it is meant for, for the
/// reason its name gives, so the corpus holds every kind of refusal the frame layer and the
/// first payload decoders have.
#[test]
fn the_v4_broken_seeds_are_refused_for_the_reason_their_name_gives() {
    use securexfer::protocol::v4::Side::{Client, Server};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/v4_frames");
    for (seed, reader, reason) in [
        ("seed-broken-direction", Server, "WrongDirection"),
        ("seed-broken-flags", Server, "NonZeroFlags"),
        ("seed-broken-empty-data", Server, "BadLength"),
        ("seed-broken-over-limit", Server, "BadLength"),
        ("seed-broken-data-over-limit", Client, "BadLength"),
        ("seed-broken-empty-type-with-payload", Server, "BadLength"),
        ("seed-broken-unknown-type", Server, "UnknownType"),
        ("seed-broken-tag-not-increasing", Server, "TagNotIncreasing"),
        ("seed-broken-hello-tag", Server, "TagNotZero"),
        ("seed-broken-data-tag", Server, "TagNotOpenPut"),
        ("seed-broken-bool", Client, "NotBool"),
        ("seed-broken-kind", Client, "KindMismatch"),
        ("seed-broken-trailing", Server, "TrailingBytes"),
        ("seed-broken-utf8", Server, "TextNotUtf8"),
        ("seed-broken-control", Client, "TextControl"),
        ("seed-broken-entry-hash-without-flag", Client, "Inconsistent"),
        ("seed-broken-entry-folder-size", Client, "Inconsistent"),
        ("seed-broken-list-entries-empty", Client, "Inconsistent"),
        ("seed-broken-get-resume-without-generation", Server, "Inconsistent"),
        ("seed-truncated-header", Server, "Incomplete"),
        ("seed-truncated-payload", Server, "Incomplete"),
    ] {
        let bytes = std::fs::read(dir.join(seed)).expect("a seed file");
        let refusal = format!("{:?}", first_v4_refusal(&bytes, reader));
        assert!(refusal.starts_with(reason), "{seed}: {refusal}");
    }
}

/// The first reason the frames in `bytes`, read by `reader`, are refused: by the frame
/// layer, the tag rules (the server's reading) or the payload decoders of `HELLO`,
/// `WELCOME`, `ERROR`, `LIST_ENTRIES` and `GET`.
fn first_v4_refusal(
    bytes: &[u8],
    reader: securexfer::protocol::v4::Side,
) -> securexfer::protocol::v4::FrameError {
    use securexfer::protocol::v4::{
        ErrorFrame, FrameType, Get, Hello, ListEntries, Side, TagCheck, Welcome, decode_frame,
    };
    let (mut rest, mut tags) = (bytes, TagCheck::new());
    loop {
        let checked = decode_frame(rest, reader).and_then(|(header, payload, used)| {
            if reader == Side::Server {
                tags.check(&header)?;
            }
            match header.frame_type() {
                FrameType::Hello => Hello::decode(payload).map(drop),
                FrameType::Welcome => Welcome::decode(payload).map(drop),
                FrameType::Error => ErrorFrame::decode(payload).map(drop),
                FrameType::ListEntries => ListEntries::decode(payload).map(drop),
                FrameType::Get => Get::decode(payload).map(drop),
                _ => Ok(()),
            }
            .map(|()| used)
        });
        match checked {
            Ok(used) => rest = &rest[used..],
            Err(error) => return error,
        }
    }
}

/// The decode corpus is request bytes the fuzzer found interesting: none of them may open
/// a connection the server takes for TLS (`securexfer::protocol::sniff`). An input that
/// starts 0x16 0x03 0x01-0x03 ?? ?? 0x01 would be a 1025 with a hand-picked id (the only
/// request whose id the server does not check), and is taken for TLS by design. (An input
/// shorter than the six bytes that decide may be `NeedMore`: a peer that sends it and closes
/// goes down the protocol-3 path.)
#[test]
fn no_decode_request_corpus_input_is_taken_for_a_tls_client_hello() {
    use securexfer::protocol::sniff::{Sniff, classify};
    for path in corpus("decode_request") {
        let bytes = std::fs::read(&path).expect("a corpus file");
        assert_ne!(classify(&bytes), Sniff::Tls, "{}", path.display());
    }
}
