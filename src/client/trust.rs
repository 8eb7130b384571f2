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
    /// A line of the file is not `HOST:PORT SHA256:…`.
    #[error("{path}:{line}: {why} (lines are `HOST:PORT SHA256:...`)")]
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

/// The `known_servers` file: one `HOST:PORT SHA256:…` per line; `#` starts a comment.
#[derive(Debug, Clone)]
pub struct KnownServers {
    path: PathBuf,
    entries: Vec<(String, String)>,
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
            let corrupt = |why: &str| TrustError::Corrupt {
                path: path.to_owned(),
                line: i + 1,
                why: why.to_owned(),
            };
            let mut words = line.split_whitespace();
            let (Some(server), Some(key), None) = (words.next(), words.next(), words.next()) else {
                return Err(corrupt("expected two words"));
            };
            if !fingerprint::is_valid(key) {
                return Err(corrupt("the second word is not a SHA256: fingerprint"));
            }
            entries.push((server.to_owned(), key.to_owned()));
        }
        Ok(KnownServers { path: path.to_owned(), entries })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key trusted for `server` (`HOST:PORT`), if any.
    pub fn get(&self, server: &str) -> Option<&str> {
        self.entries.iter().find(|(s, _)| s == server).map(|(_, k)| k.as_str())
    }

    /// Trusts `key` for `server` from now on (replacing what was trusted before) and
    /// writes the file atomically: a crash leaves the old file or the new one.
    pub fn trust(&mut self, server: &str, key: &str) -> Result<(), TrustError> {
        match self.entries.iter_mut().find(|(s, _)| s == server) {
            Some(entry) => entry.1 = key.to_owned(),
            None => self.entries.push((server.to_owned(), key.to_owned())),
        }
        let mut text = String::from("# Server keys securexfer trusts: HOST:PORT SHA256:...\n");
        for (server, key) in &self.entries {
            text.push_str(&format!("{server} {key}\n"));
        }
        crate::atomic_file::write_private(&self.path, text.as_bytes())
            .map_err(|source| TrustError::Io { path: self.path.clone(), source })?;
        Ok(())
    }
}

/// Accepts the server's key only if it is `expected` (any key when `None`), and notes the
/// key presented either way, so that a mismatch can be reported with both.
#[derive(Debug)]
struct KeyCheck {
    expected: Option<String>,
    presented: Mutex<Option<String>>,
    algorithms: WebPkiSupportedAlgorithms,
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
    let check = Arc::new(KeyCheck {
        expected: expected.map(str::to_owned),
        presented: Mutex::new(None),
        algorithms: provider.signature_verification_algorithms,
    });
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
    let presented = check.presented.lock().unwrap_or_else(|p| p.into_inner()).clone();
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
}
