//! Replays the wire captures of three existing implementations (`../shared/captures`): every
//! request and response must decode, in order, with nothing left over; the AES key recovered
//! with each client's `priv.key` must decrypt the captured file to `small.bin`; and each
//! documented quirk (version bytes, the 259-byte 1028, empty 2104, wrong cksum, reused AES
//! key, full-path file names) is seen and handled.
//!
//! These tests read only `priv.key`, never `me.info`: the identity-file parser has its own
//! tests. CI always has the captures (and fails without them, see
//! [`common::captures_dir`]); a checkout without them skips with a message.

use crate::common;

use securexfer::crypto::aes::{BLOCK, unpadded_len};
use securexfer::crypto::{AesKey, CbcDecryptor, Cksum, PrivateKey, PublicKey};
use securexfer::protocol::{
    ClientId, DecodedRequest, Request, RequestCode, Response, ResponseCode, ResponseHeader,
    decode_request, decode_response, storage_name,
};
use std::path::Path;

const IMPLEMENTATIONS: [&str; 3] = ["b0rik", "dor", "tomer"];
const RUNS: [&str; 2] = ["register", "reconnect"];

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One TCP connection of a run, decoded.
struct Connection {
    name: String,
    requests: Vec<(DecodedRequest, Vec<u8>)>,
    responses: Vec<(ResponseHeader, Response)>,
}

/// One run (`register` or `reconnect`) of one implementation, decoded.
struct Run {
    implementation: &'static str,
    run: &'static str,
    connections: Vec<Connection>,
}

impl Run {
    fn label(&self) -> String {
        format!("{}/{}", self.implementation, self.run)
    }

    /// Every request of the run in order, with its content.
    fn requests(&self) -> impl Iterator<Item = &(DecodedRequest, Vec<u8>)> {
        self.connections.iter().flat_map(|c| &c.requests)
    }

    /// Every response of the run in order.
    fn responses(&self) -> impl Iterator<Item = &(ResponseHeader, Response)> {
        self.connections.iter().flat_map(|c| &c.responses)
    }

    /// The one 1028 of the run: its file header and encrypted content.
    fn sent_file(&self) -> (&securexfer::protocol::FileHeader, &[u8]) {
        let mut files = self.requests().filter_map(|(d, content)| match &d.request {
            Request::SendFile(file) => Some((file, content.as_slice())),
            _ => None,
        });
        let file = files.next().unwrap_or_else(|| panic!("{}: no 1028", self.label()));
        assert!(files.next().is_none(), "{}: one file was sent once", self.label());
        file
    }

    /// The encrypted AES key of the run's 2102 or 2105.
    fn encrypted_aes_key(&self) -> &[u8] {
        self.responses()
            .find_map(|(_, r)| match r {
                Response::PublicKeyAccepted { encrypted_key, .. }
                | Response::ReconnectAccepted { encrypted_key, .. } => {
                    Some(encrypted_key.as_slice())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{}: no 2102/2105", self.label()))
    }

    /// The run's 2103.
    fn file_received(&self) -> (u32, &str, u32) {
        self.responses()
            .find_map(|(_, r)| match r {
                Response::FileReceived { content_size, file_name, cksum, .. } => {
                    Some((*content_size, file_name.as_str(), *cksum))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{}: no 2103", self.label()))
    }
}

/// Decodes every request in a c2s stream; the stream must be consumed exactly.
fn decode_requests(bytes: &[u8], label: &str) -> Vec<(DecodedRequest, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let decoded = decode_request(&bytes[at..], u32::MAX)
            .unwrap_or_else(|e| panic!("{label}: request at byte {at} does not decode: {e}"));
        let content = bytes[at + decoded.content.start..at + decoded.content.end].to_vec();
        at += decoded.len;
        out.push((decoded, content));
    }
    out
}

/// Decodes every response in an s2c stream; the stream must be consumed exactly.
fn decode_responses(bytes: &[u8], label: &str) -> Vec<(ResponseHeader, Response)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (header, response, len) = decode_response(&bytes[at..])
            .unwrap_or_else(|e| panic!("{label}: response at byte {at} does not decode: {e}"));
        at += len;
        out.push((header, response));
    }
    out
}

/// The connection files `RUN.connNN.{c2s,s2c}.bin` of a run, in connection order.
fn connection_names(folder: &Path, run: &str) -> Vec<String> {
    let prefix = format!("{run}.conn");
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("listing {}: {e}", folder.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|f| Some(f.strip_prefix(&prefix)?.strip_suffix(".c2s.bin")?.to_owned()))
        .map(|n| format!("{prefix}{n}"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no {prefix}NN.c2s.bin in {}", folder.display());
    names
}

fn load_run(captures: &Path, implementation: &'static str, run: &'static str) -> Run {
    let folder = captures.join(implementation);
    let connections = connection_names(&folder, run)
        .into_iter()
        .map(|name| {
            let label = format!("{implementation}/{name}");
            let c2s = read(&folder.join(format!("{name}.c2s.bin")));
            let s2c = read(&folder.join(format!("{name}.s2c.bin")));
            Connection {
                requests: decode_requests(&c2s, &format!("{label}.c2s")),
                responses: decode_responses(&s2c, &format!("{label}.s2c")),
                name,
            }
        })
        .collect();
    Run { implementation, run, connections }
}

fn all_runs(captures: &Path) -> Vec<Run> {
    IMPLEMENTATIONS
        .iter()
        .flat_map(|i| RUNS.iter().map(move |r| load_run(captures, i, r)))
        .collect()
}

fn private_key(captures: &Path, implementation: &str) -> PrivateKey {
    let path = captures.join(implementation).join("priv.key");
    let text = std::fs::read_to_string(&path).expect("priv.key is text");
    PrivateKey::from_base64(&text)
        .unwrap_or_else(|e| panic!("{implementation}/priv.key does not load: {e}"))
}

fn aes_key(captures: &Path, run: &Run) -> AesKey {
    private_key(captures, run.implementation)
        .decrypt_aes_key(run.encrypted_aes_key())
        .unwrap_or_else(|e| {
            panic!("{}: the AES key does not decrypt with priv.key: {e}", run.label())
        })
}

/// Streams the content through the decryptor in 1 KiB pieces, as a server writing to disk.
fn decrypt(key: &AesKey, content: &[u8]) -> Vec<u8> {
    let mut dec = CbcDecryptor::new(key);
    let mut buf = content.to_vec();
    for chunk in buf.chunks_mut(1024) {
        dec.decrypt_blocks(chunk);
    }
    let last = buf.len().checked_sub(BLOCK).expect("at least one block");
    let len = last + unpadded_len(&buf[last..]).expect("valid PKCS#7 padding");
    buf.truncate(len);
    buf
}

fn small_bin(captures: &Path) -> Vec<u8> {
    read(&captures.join("small.bin"))
}

// ---------------------------------------------------------------------------------------

#[test]
fn every_captured_message_decodes_in_the_documented_order() {
    let Some(captures) = common::captures_dir() else { return };
    use RequestCode as Q;
    use ResponseCode as A;
    for run in all_runs(&captures) {
        let requests: Vec<_> = run.requests().map(|(d, _)| d.header.code).collect();
        let responses: Vec<_> = run.responses().map(|(h, _)| h.code).collect();
        let (want_requests, want_responses): (&[_], &[_]) = match run.run {
            "register" => (
                &[Q::Register, Q::SendPublicKey, Q::SendFile, Q::CrcOk],
                &[A::Registered, A::PublicKeyAccepted, A::FileReceived, A::Acknowledged],
            ),
            _ => (
                &[Q::Reconnect, Q::SendFile, Q::CrcOk],
                &[A::ReconnectAccepted, A::FileReceived, A::Acknowledged],
            ),
        };
        assert_eq!(requests, want_requests, "{}", run.label());
        assert!(
            responses.len() >= want_responses.len(),
            "{}: responses {responses:?}",
            run.label()
        );
        let (answers, trailing) = responses.split_at(want_responses.len());
        assert_eq!(answers, want_responses, "{}", run.label());
        if run.implementation == "tomer" {
            // tomer's server keeps answering 2107 after the client has closed.
            assert!(!trailing.is_empty(), "{}: tomer's trailing 2107s", run.label());
            assert!(trailing.iter().all(|c| *c == A::GeneralError), "{}", run.label());
        } else {
            assert!(trailing.is_empty(), "{}: unexpected {trailing:?}", run.label());
        }
    }
}

#[test]
fn one_per_request_connections_each_carry_one_exchange() {
    let Some(captures) = common::captures_dir() else { return };
    for run in RUNS {
        let run = load_run(&captures, "dor", run);
        assert!(run.connections.len() > 1, "{}", run.label());
        for conn in &run.connections {
            assert_eq!(conn.requests.len(), 1, "{}", conn.name);
            assert_eq!(conn.responses.len(), 1, "{}", conn.name);
        }
    }
}

#[test]
fn captured_version_bytes_are_accepted_whatever_they_are() {
    let Some(captures) = common::captures_dir() else { return };
    // From captures/README.md: client / server version bytes.
    let expected = [("b0rik", 3, 3), ("dor", 1, 3), ("tomer", 3, 2)];
    for run in all_runs(&captures) {
        let (_, client, server) =
            expected.iter().find(|(i, ..)| *i == run.implementation).expect("known");
        assert!(run.requests().all(|(d, _)| d.header.version == *client), "{}", run.label());
        assert!(run.responses().all(|(h, _)| h.version == *server), "{}", run.label());
    }
}

#[test]
fn captured_client_ids_are_the_registered_id_throughout() {
    let Some(captures) = common::captures_dir() else { return };
    for implementation in IMPLEMENTATIONS {
        let register = load_run(&captures, implementation, "register");
        let id = register
            .responses()
            .find_map(|(_, r)| match r {
                Response::Registered { client_id } => Some(*client_id),
                _ => None,
            })
            .expect("a 2100");
        assert_ne!(id, ClientId::ZERO);
        for run in [register, load_run(&captures, implementation, "reconnect")] {
            for (d, _) in run.requests() {
                if d.header.code != RequestCode::Register {
                    assert_eq!(d.header.client_id, id, "{} {}", run.label(), d.header.code);
                }
            }
            for (_, response) in run.responses() {
                let sent = match response {
                    Response::Registered { client_id }
                    | Response::PublicKeyAccepted { client_id, .. }
                    | Response::ReconnectAccepted { client_id, .. }
                    | Response::FileReceived { client_id, .. } => Some(*client_id),
                    Response::Acknowledged { client_id }
                    | Response::ReconnectDenied { client_id } => *client_id,
                    Response::RegistrationFailed | Response::GeneralError => None,
                };
                if let Some(sent) = sent {
                    assert_eq!(sent, id, "{}: {response:?}", run.label());
                }
            }
        }
    }
}

#[test]
fn empty_acknowledgement_from_dor_decodes_without_an_id() {
    let Some(captures) = common::captures_dir() else { return };
    for run in all_runs(&captures) {
        let ack = run
            .responses()
            .find_map(|(_, r)| match r {
                Response::Acknowledged { client_id } => Some(*client_id),
                _ => None,
            })
            .expect("a 2104");
        assert_eq!(ack.is_none(), run.implementation == "dor", "{}: {ack:?}", run.label());
    }
}

#[test]
fn captured_public_key_is_the_one_in_priv_key() {
    let Some(captures) = common::captures_dir() else { return };
    for implementation in IMPLEMENTATIONS {
        let run = load_run(&captures, implementation, "register");
        let field = run
            .requests()
            .find_map(|(d, _)| match &d.request {
                Request::SendPublicKey { public_key, .. } => Some(public_key.clone()),
                _ => None,
            })
            .expect("a 1026");
        let public = PublicKey::from_field(&field).expect("the client's key parses");
        assert_eq!(public, private_key(&captures, implementation).public_key(), "{implementation}");
        assert_eq!(public.to_der().last(), Some(&17), "{implementation}: e = 17");
    }
}

#[test]
fn captured_file_decrypts_to_small_bin_with_the_key_from_priv_key() {
    let Some(captures) = common::captures_dir() else { return };
    let small = small_bin(&captures);
    for run in all_runs(&captures) {
        let key = aes_key(&captures, &run);
        let (file, content) = run.sent_file();
        assert_eq!(content.len(), file.content_size as usize, "{}", run.label());
        assert!(decrypt(&key, content) == small, "{}: decrypts to small.bin", run.label());
    }
}

#[test]
fn short_layout_1028_from_tomer_carries_the_content_after_the_payload() {
    let Some(captures) = common::captures_dir() else { return };
    for run in all_runs(&captures) {
        let (d, _) =
            run.requests().find(|(d, _)| d.header.code == RequestCode::SendFile).expect("a 1028");
        let Request::SendFile(file) = &d.request else { unreachable!() };
        let spec = 259 + file.content_size;
        let expected = if run.implementation == "tomer" { 259 } else { spec };
        assert_eq!(d.header.payload_size, expected, "{}", run.label());
    }
}

#[test]
fn captured_cksums_match_ours_except_where_the_server_is_wrong() {
    let Some(captures) = common::captures_dir() else { return };
    let ours = Cksum::of(&small_bin(&captures));
    for run in all_runs(&captures) {
        let (file, content) = run.sent_file();
        let (content_size, name, cksum) = run.file_received();
        assert_eq!(content_size, file.content_size, "{}", run.label());
        assert_eq!(name, file.file_name.as_str(), "{}", run.label());
        if run.implementation == "dor" {
            // dor's server reports the zlib CRC-32 of the ciphertext instead.
            assert_ne!(cksum, ours, "{}", run.label());
            let zlib = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, content) as u32;
            assert_eq!(cksum, zlib, "{}: zlib CRC-32 of the ciphertext", run.label());
        } else {
            assert_eq!(cksum, ours, "{}: POSIX cksum of small.bin", run.label());
        }
    }
}

#[test]
fn captured_file_names_store_as_small_bin() {
    let Some(captures) = common::captures_dir() else { return };
    for run in all_runs(&captures) {
        let (file, _) = run.sent_file();
        let sent = file.file_name.as_str();
        assert_eq!(storage_name(sent), Ok("small.bin"), "{}: {sent:?}", run.label());
        // The 1029 names the file exactly as the 1028 did.
        let confirmed = run
            .requests()
            .find_map(|(d, _)| match &d.request {
                Request::CrcOk { file_name } => Some(file_name.as_str()),
                _ => None,
            })
            .expect("a 1029");
        assert_eq!(confirmed, sent, "{}", run.label());
    }
}

#[test]
fn reconnect_gives_a_fresh_aes_key_except_on_dor() {
    let Some(captures) = common::captures_dir() else { return };
    for implementation in IMPLEMENTATIONS {
        let register = aes_key(&captures, &load_run(&captures, implementation, "register"));
        let reconnect = aes_key(&captures, &load_run(&captures, implementation, "reconnect"));
        assert_eq!(register == reconnect, implementation == "dor", "{implementation}");
    }
}

#[test]
fn absent_captures_skip_on_a_developer_machine_and_fail_in_ci() {
    use common::CapturesDecision::{Fail, Run, Skip};
    use common::captures_decision;
    assert_eq!(captures_decision(true, None), Run);
    assert_eq!(captures_decision(true, Some("true")), Run);
    assert_eq!(captures_decision(false, None), Skip);
    assert_eq!(captures_decision(false, Some("false")), Skip);
    assert_eq!(captures_decision(false, Some("")), Skip);
    assert_eq!(captures_decision(false, Some("true")), Fail);
}

#[test]
fn no_captured_request_can_be_taken_for_a_tls_client_hello() {
    use securexfer::protocol::sniff::{Sniff, classify};
    let Some(captures) = common::captures_dir() else { return };
    let mut checked = 0;
    for implementation in IMPLEMENTATIONS {
        let folder = captures.join(implementation);
        for run in RUNS {
            for name in connection_names(&folder, run) {
                let c2s = read(&folder.join(format!("{name}.c2s.bin")));
                // Any request may open a connection (some clients open one per request), so
                // the server's look at a connection could land on each of them.
                let mut at = 0;
                while at < c2s.len() {
                    let sniffed = classify(&c2s[at..]);
                    assert_eq!(sniffed, Sniff::Protocol3, "{implementation}/{name} byte {at}");
                    at += decode_request(&c2s[at..], u32::MAX).expect("decodes").len;
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 12, "only {checked} requests replayed");
}
