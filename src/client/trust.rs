//! Which server key the client trusts for which server, as ssh users know it: the
//! `known_servers` file (trust on first use, a pin given beforehand, a changed key a hard
//! failure), and the TLS check that accepts exactly the key trusted.
//!
//! A server is known by the SHA-256 fingerprint of the public key in its certificate
//! (`SHA256:` and unpadded base64, as `securexfer serve` prints it and `securexfer db
//! fingerprint` shows it). Names and certificate authorities play no part: a self-hosted
//! server has neither, and the key is what an attacker in the middle cannot present.

use crate::crypto::fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// The file under the client's home directory.
pub const KNOWN_SERVERS: &str = "known_servers";

/// The ALPN name of protocol 4.
pub const ALPN: &[u8] = b"securexfer/4";

/// Why the trust store or a server's key could not be used.
#[derive(Debug, Error)]
pub enum TrustError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line of the file is not `HOST:PORT SHA256:… [TIME]` or `HOST:PORT protocol-3 TIME`.
    #[error(
        "{path}:{line}: {why} (lines are `HOST:PORT SHA256:... [TIME]` or `HOST:PORT \
         protocol-3 TIME`)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The server could not be reached.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// `HOST:PORT`.
        server: String,
        /// Why.
        source: io::Error,
    },
    /// The TLS handshake failed for another reason than the key: the server does not
    /// speak protocol 4 (an older securexfer, or another protocol-3 server).
    #[error("{server} does not speak protocol 4 (the TLS 1.3 handshake failed: {why})")]
    NotProtocol4 {
        /// `HOST:PORT`.
        server: String,
        /// What failed.
        why: String,
    },
    /// The server presented another key than the one expected.
    #[error("{server} presented the key {presented}, not the one expected, {expected}")]
    KeyMismatch {
        /// `HOST:PORT`.
        server: String,
        /// What was expected.
        expected: String,
        /// What the server presented.
        presented: String,
    },
}

/// How long a server found to speak only protocol 3 is remembered, so that `auto` does not
/// probe it at every run; after that it is probed again.
pub const PROTOCOL3_MEMORY_SECS: i64 = 24 * 60 * 60;
/// The second word of a line that remembers a protocol-3-only server. It grants nothing:
/// such a line never lets a key through, and a server with a key line is never spoken 3 to.
pub const PROTOCOL3_WORD: &str = "protocol-3";

/// What `known_servers` says about one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// It speaks protocol 4 with this key (`SHA256:…`), first seen then (seconds since
    /// 1970; `None` for lines written before the date was kept).
    Key {
        /// The fingerprint.
        key: String,
        /// When it was first seen.
        since: Option<i64>,
    },
    /// It was found to speak only protocol 3 at this time.
    Protocol3 {
        /// When.
        at: i64,
    },
}

/// The `known_servers` file: `HOST:PORT SHA256:… TIME` per server speaking protocol 4, or
/// `HOST:PORT protocol-3 TIME` for one found to speak only protocol 3 (TIME as
/// `2026-12-01T10:00:00Z`; a key line may lack it); `#` starts a comment.
#[derive(Debug, Clone)]
pub struct KnownServers {
    path: PathBuf,
    entries: Vec<(String, Known)>,
}

impl KnownServers {
    /// Reads `path`; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(TrustError::Io { path: path.to_owned(), source }),
        };
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let entry = parse_line(line).map_err(|why| TrustError::Corrupt {
                path: path.to_owned(),
                line: i + 1,
                why: why.to_owned(),
            })?;
            entries.push(entry);
        }
        Ok(KnownServers { path: path.to_owned(), entries })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key trusted for `server` (`HOST:PORT`), if any.
    pub fn get(&self, server: &str) -> Option<&str> {
        match self.entry(server) {
            Some(Known::Key { key, .. }) => Some(key),
            _ => None,
        }
    }

    /// Everything the file says about `server`.
    pub fn entry(&self, server: &str) -> Option<&Known> {
        self.entries.iter().find(|(s, _)| s == server).map(|(_, k)| k)
    }

    /// Trusts `key` for `server` from now on (replacing what was trusted before, and a
    /// protocol-3 line) and writes the file atomically: a crash leaves the old file or the
    /// new one. The date of first sight stays when the key is the one already trusted.
    pub fn trust(&mut self, server: &str, key: &str) -> Result<(), TrustError> {
        let since = match self.entry(server) {
            Some(Known::Key { key: old, since }) if old == key => *since,
            _ => Some(now_secs()),
        };
        self.set(server, Known::Key { key: key.to_owned(), since })
    }

    /// Remembers that `server` spoke only protocol 3 at `at` (never over a key line: a
    /// server once seen speaking 4 stays a protocol-4 server).
    pub fn remember_protocol3(&mut self, server: &str, at: i64) -> Result<(), TrustError> {
        if self.get(server).is_some() {
            return Ok(());
        }
        self.set(server, Known::Protocol3 { at })
    }

    fn set(&mut self, server: &str, known: Known) -> Result<(), TrustError> {
        match self.entries.iter_mut().find(|(s, _)| s == server) {
            Some(entry) => entry.1 = known,
            None => self.entries.push((server.to_owned(), known)),
        }
        let mut text = String::from(
            "# Servers securexfer knows: HOST:PORT SHA256:... FIRST-SEEN, or HOST:PORT protocol-3 WHEN\n",
        );
        for (server, known) in &self.entries {
            text.push_str(&format_line(server, known));
            text.push('\n');
        }
        crate::atomic_file::write_private(&self.path, text.as_bytes())
            .map_err(|source| TrustError::Io { path: self.path.clone(), source })?;
        Ok(())
    }
}

fn parse_line(line: &str) -> Result<(String, Known), &'static str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (server, second, time) = match words[..] {
        [server, second] => (server, second, None),
        [server, second, time] => {
            (server, second, Some(parse_time(time).ok_or("the third word is not a UTC time")?))
        }
        _ => return Err("expected two or three words"),
    };
    let known = if second == PROTOCOL3_WORD {
        Known::Protocol3 { at: time.ok_or("a protocol-3 line needs its time")? }
    } else if fingerprint::is_valid(second) {
        Known::Key { key: second.to_owned(), since: time }
    } else {
        return Err("the second word is neither a SHA256: fingerprint nor protocol-3");
    };
    Ok((server.to_owned(), known))
}

fn format_line(server: &str, known: &Known) -> String {
    match known {
        Known::Key { key, since: Some(t) } => format!("{server} {key} {}", format_time(*t)),
        Known::Key { key, since: None } => format!("{server} {key}"),
        Known::Protocol3 { at } => format!("{server} {PROTOCOL3_WORD} {}", format_time(*at)),
    }
}

/// Seconds since 1970-01-01 UTC now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-12-01T10:00:00Z` for `secs` since 1970 (civil-from-days, proleptic Gregorian).
pub fn format_time(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The inverse of [`format_time`]; `None` for anything else.
pub fn parse_time(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, m, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 59 {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    (format_time(secs) == text).then_some(secs)
}

/// Accepts the server's key only if it is `expected` (any key when `None`), and notes the
/// key presented either way, so that a mismatch can be reported with both.
#[derive(Debug)]
pub(crate) struct KeyCheck {
    expected: Option<String>,
    presented: Mutex<Option<String>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl KeyCheck {
    /// A check for `expected` (any key when `None`) with the provider's algorithms.
    pub(crate) fn new(
        expected: Option<String>,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Arc<Self> {
        Arc::new(KeyCheck {
            expected,
            presented: Mutex::new(None),
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// The fingerprint of the key the server presented, once it did.
    pub(crate) fn presented(&self) -> Option<String> {
        self.presented.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What was expected.
    pub(crate) fn expected(&self) -> Option<&str> {
        self.expected.as_deref()
    }
}

impl ServerCertVerifier for KeyCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let presented = fingerprint::of(cert.subject_public_key_info().as_ref());
        let matches = self.expected.as_deref().is_none_or(|e| e == presented);
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) = Some(presented);
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The handshake must be signed by the key just checked: that proves the server
        // holds its private key, which is what pinning relies on.
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Connects to `server` over TLS 1.3 with ALPN `securexfer/4` and returns the fingerprint
/// of the key it proved it holds. With `expected`, any other key fails the handshake
/// ([`TrustError::KeyMismatch`]) before anything is sent. Nothing but the handshake happens.
pub fn presented_key(
    server: &str,
    expected: Option<&str>,
    timeout: Duration,
) -> Result<String, TrustError> {
    let connect_err = |source| TrustError::Connect { server: server.to_owned(), source };
    let addrs: Vec<_> = server.to_socket_addrs().map_err(connect_err)?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for it");
    let mut socket = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut socket = socket.ok_or_else(|| connect_err(last))?;
    socket.set_read_timeout(Some(timeout)).map_err(connect_err)?;
    socket.set_write_timeout(Some(timeout)).map_err(connect_err)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = KeyCheck::new(expected.map(str::to_owned), &provider);
    let not_v4 = |why: String| TrustError::NotProtocol4 { server: server.to_owned(), why };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| not_v4(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&check) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let name = ServerName::try_from("securexfer").map_err(|e| not_v4(e.to_string()))?;
    let mut tls =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| not_v4(e.to_string()))?;
    let handshake = (|| {
        while tls.is_handshaking() {
            tls.complete_io(&mut socket)?;
        }
        Ok::<(), io::Error>(())
    })();
    let presented = check.presented();
    match (handshake, presented, expected) {
        (Ok(()), Some(key), _) => {
            tls.send_close_notify();
            let _ = tls.complete_io(&mut socket);
            Ok(key)
        }
        (Err(_), Some(presented), Some(expected)) if presented != expected => {
            Err(TrustError::KeyMismatch {
                server: server.to_owned(),
                expected: expected.to_owned(),
                presented,
            })
        }
        (Err(e), _, _) => Err(not_v4(e.to_string())),
        (Ok(()), None, _) => Err(not_v4("no certificate was presented".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    const KEY_B: &str = "SHA256:ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs";

    #[test]
    fn keys_are_trusted_per_server_replaced_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(KNOWN_SERVERS);
        let mut known = KnownServers::load(&path).unwrap();
        assert_eq!(known.get("a:1"), None);
        known.trust("a:1", KEY_A).unwrap();
        known.trust("b:2", KEY_B).unwrap();
        known.trust("a:1", KEY_B).unwrap();
        let again = KnownServers::load(&path).unwrap();
        assert_eq!((again.get("a:1"), again.get("b:2")), (Some(KEY_B), Some(KEY_B)));
        assert_eq!(again.get("c:3"), None);
    }

    #[test]
    fn a_bad_line_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KNOWN_SERVERS);
        std::fs::write(&path, format!("# comment\na:1 {KEY_A}\nb:2 not-a-key\n")).unwrap();
        let e = KnownServers::load(&path).unwrap_err();
        assert!(matches!(e, TrustError::Corrupt { line: 3, .. }), "{e}");
        assert!(e.to_string().contains(":3:"), "{e}");
    }

    #[test]
    fn times_are_written_as_utc_and_read_back() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_796_119_200), "2026-12-01T10:00:00Z");
        for t in [0, 951_782_400, 1_796_119_200, 4_102_444_799] {
            assert_eq!(parse_time(&format_time(t)), Some(t), "{t}");
        }
        for bad in ["2026-13-01T10:00:00Z", "2026-02-30T10:00:00Z", "yesterday", ""] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn protocol3_lines_are_kept_apart_from_keys_and_never_replace_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KNOWN_SERVERS);
        std::fs::write(&path, format!("old:1 {KEY_A}\n")).unwrap();
        let mut known = KnownServers::load(&path).unwrap();
        assert_eq!(known.entry("old:1"), Some(&Known::Key { key: KEY_A.into(), since: None }));
        known.remember_protocol3("p3:1", 1_796_119_200).unwrap();
        known.remember_protocol3("old:1", 1_796_119_200).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("p3:1 protocol-3 2026-12-01T10:00:00Z"), "{text}");
        let again = KnownServers::load(&path).unwrap();
        assert_eq!(again.get("p3:1"), None, "a protocol-3 line trusts no key");
        assert_eq!(again.entry("p3:1"), Some(&Known::Protocol3 { at: 1_796_119_200 }));
        assert_eq!(again.get("old:1"), Some(KEY_A));
        let mut again = again;
        again.trust("p3:1", KEY_B).unwrap();
        assert!(matches!(again.entry("p3:1"), Some(Known::Key { since: Some(_), .. })));
        std::fs::write(&path, "x:1 protocol-3\n").unwrap();
        assert!(KnownServers::load(&path).is_err(), "a protocol-3 line needs its time");
    }
}
