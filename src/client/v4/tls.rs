//! The client's TLS: a configuration of TLS 1.3 only on the ring provider, ALPN
//! `securexfer/4`, the server's key checked by the trust verifier and the client's own key
//! presented as a certificate; and the dial that watches the peer's first reply, so that a
//! protocol-3-only peer is told apart from a TLS server that failed the handshake.
//!
//! The server's key is checked when its `Certificate` arrives, which in TLS 1.3 is before
//! the client sends its own: a server the client does not trust never sees the client's
//! key.

use super::key::{ClientKey, KeyFileError};
use super::negotiate::{
    FirstReply, PROBE_SILENCE, Probe, TLS_ALERT_RECORD, TLS_HANDSHAKE_RECORD, classify,
};
use crate::client::trust::{ALPN, KeyCheck};
use crate::crypto::fingerprint;
use crate::protocol::v4::UPGRADE_EXPORTER_LABEL;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The TLS stream a protocol-4 connection runs over.
pub type TlsStream = tokio_rustls::client::TlsStream<Watched>;

/// Why no protocol-4 connection was made.
#[derive(Debug, Error)]
pub enum DialError {
    /// The host name does not resolve.
    #[error("cannot find the server {server}: {cause}")]
    Resolve {
        /// `HOST:PORT`.
        server: String,
        /// Why.
        cause: io::Error,
    },
    /// No TCP connection.
    #[error(
        "cannot connect to {server}: {cause} (is the server running, and is the address right?)"
    )]
    Connect {
        /// `HOST:PORT`.
        server: String,
        /// Why.
        cause: io::Error,
    },
    /// The peer answered the ClientHello as a protocol-3-only server would.
    #[error("{server} does not speak protocol 4 ({})", describe(*reply))]
    Protocol3Only {
        /// `HOST:PORT`.
        server: String,
        /// What it did.
        reply: FirstReply,
    },
    /// The server presented another key than the one trusted or pinned.
    #[error("{server} presented the key {presented}, not the one expected, {expected}")]
    KeyMismatch {
        /// `HOST:PORT`.
        server: String,
        /// What was expected.
        expected: String,
        /// What it presented.
        presented: String,
    },
    /// The TLS handshake failed (an alert, a bad certificate, no common ALPN).
    #[error("the TLS handshake with {server} failed: {why}")]
    Handshake {
        /// `HOST:PORT`.
        server: String,
        /// What failed.
        why: String,
    },
    /// The handshake did not finish in time.
    #[error("the TLS handshake with {server} did not finish within {secs} s")]
    Timeout {
        /// `HOST:PORT`.
        server: String,
        /// The limit.
        secs: u64,
    },
    /// The client key could not be presented.
    #[error(transparent)]
    Key(#[from] KeyFileError),
}

fn describe(reply: FirstReply) -> String {
    match reply {
        FirstReply::Byte(b) => {
            format!("it answered the TLS ClientHello with byte 0x{b:02x}, not TLS")
        }
        FirstReply::Closed => "it closed the connection at the TLS ClientHello".to_owned(),
        FirstReply::Silent => {
            format!("it said nothing for {} s after the TLS ClientHello", PROBE_SILENCE.as_secs())
        }
    }
}

/// A completed handshake and what it established.
pub struct Dialed {
    /// The stream.
    pub tls: TlsStream,
    /// `SHA256:…` of the key the server proved it holds.
    pub server_key: String,
    /// Its raw form.
    pub server_fp: [u8; 32],
    /// This connection's upgrade exporter value.
    pub exporter: [u8; 32],
}

/// The client configuration for one connection to a server whose key must be `check`'s.
fn config(key: &ClientKey, check: Arc<KeyCheck>) -> Result<rustls::ClientConfig, DialError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let failed = |e: rustls::Error| KeyFileError::Make(e.to_string());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(failed)?
        .dangerous()
        .with_custom_certificate_verifier(check as Arc<dyn ServerCertVerifier>)
        .with_client_auth_cert(vec![key.certificate()?], key.private_key())
        .map_err(failed)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The name sent as SNI: the host when it is a name (an address sends none, as rustls does
/// for an IP address). The server ignores it; proxies may route by it.
fn server_name(server: &str) -> (ServerName<'static>, bool) {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match ServerName::try_from(host.to_owned()) {
        Ok(name) => (name, true),
        // Not a valid DNS name (an underscore, say): connect without SNI.
        Err(_) => (ServerName::try_from("securexfer").expect("a valid name"), false),
    }
}

/// Connects to `server`, watches the peer's first reply to the ClientHello and completes
/// the handshake with `key` as the client certificate, accepting only `expected` (any key
/// when `None`: trust on first use, decided by the caller).
pub async fn dial(
    server: &str,
    key: &ClientKey,
    expected: Option<String>,
    connect_timeout: Duration,
) -> Result<Dialed, DialError> {
    let provider = rustls::crypto::ring::default_provider();
    let check = KeyCheck::new(expected, &provider);
    let mut config = config(key, Arc::clone(&check))?;
    let (name, sni) = server_name(server);
    config.enable_sni = sni;
    let tcp = connect_tcp(server, connect_timeout).await?;
    let first = Arc::new(AtomicU16::new(NOTHING_YET));
    let watched = Watched { inner: tcp, first: Arc::clone(&first), decided: false };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut handshake = connector.connect(name, watched);
    let reply = |first: &AtomicU16| match first.load(Ordering::Acquire) {
        NOTHING_YET => None,
        CLOSED => Some(FirstReply::Closed),
        byte => Some(FirstReply::Byte(byte as u8)),
    };
    let result = match tokio::time::timeout(PROBE_SILENCE, &mut handshake).await {
        Ok(result) => result,
        Err(_) if reply(&first).is_none() => {
            return Err(DialError::Protocol3Only {
                server: server.to_owned(),
                reply: FirstReply::Silent,
            });
        }
        Err(_) => {
            let rest = connect_timeout.saturating_sub(PROBE_SILENCE).max(Duration::from_secs(1));
            tokio::time::timeout(rest, handshake).await.map_err(|_| DialError::Timeout {
                server: server.to_owned(),
                secs: connect_timeout.as_secs().max(PROBE_SILENCE.as_secs()),
            })?
        }
    };
    match result {
        Ok(tls) => established(server, tls),
        Err(e) => Err(failed_handshake(server, e, reply(&first), &check)),
    }
}

/// What a handshake that failed says: a protocol-3 peer by its first reply, a key that
/// is not the one expected, or a TLS failure.
fn failed_handshake(
    server: &str,
    error: io::Error,
    reply: Option<FirstReply>,
    check: &KeyCheck,
) -> DialError {
    if let Some(reply) = reply
        && classify(reply) == Probe::Protocol3Only
    {
        return DialError::Protocol3Only { server: server.to_owned(), reply };
    }
    if let (Some(presented), Some(expected)) = (check.presented(), check.expected())
        && presented != expected
    {
        return DialError::KeyMismatch {
            server: server.to_owned(),
            expected: expected.to_owned(),
            presented,
        };
    }
    DialError::Handshake { server: server.to_owned(), why: error.to_string() }
}

fn established(server: &str, tls: TlsStream) -> Result<Dialed, DialError> {
    let failed =
        |why: &str| DialError::Handshake { server: server.to_owned(), why: why.to_owned() };
    let (_, connection) = tls.get_ref();
    if connection.alpn_protocol() != Some(ALPN) {
        return Err(failed("the server did not agree to ALPN securexfer/4"));
    }
    let cert = connection
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| failed("no server certificate"))?;
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|_| failed("bad certificate"))?;
    let spki = parsed.subject_public_key_info();
    let exporter = connection
        .export_keying_material([0u8; 32], UPGRADE_EXPORTER_LABEL, Some(b""))
        .map_err(|e| failed(&e.to_string()))?;
    Ok(Dialed {
        server_key: fingerprint::of(spki.as_ref()),
        server_fp: fingerprint::raw(spki.as_ref()),
        exporter,
        tls,
    })
}

async fn connect_tcp(server: &str, timeout: Duration) -> Result<TcpStream, DialError> {
    let addrs: Vec<_> = tokio::net::lookup_host(server)
        .await
        .map_err(|cause| DialError::Resolve { server: server.to_owned(), cause })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for it");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "timed out"),
        }
    }
    Err(DialError::Connect { server: server.to_owned(), cause: last })
}

/// No reply yet.
const NOTHING_YET: u16 = 0x100;
/// Closed (or reset) before any byte.
const CLOSED: u16 = 0x101;

/// The TCP stream, watched for the peer's first reply: its first byte (or a close before
/// it) is noted for the caller, and a byte that cannot start a TLS record ends the read at
/// once, so that rustls does not wait for a record that will never come.
pub struct Watched {
    inner: TcpStream,
    first: Arc<AtomicU16>,
    decided: bool,
}

impl Watched {
    fn note(&mut self, result: &io::Result<()>, filled: &[u8]) -> io::Result<()> {
        let value = match (result, filled.first()) {
            (Ok(()), Some(&byte)) => u16::from(byte),
            (Ok(()), None) | (Err(_), _) => CLOSED,
        };
        self.decided = true;
        self.first.store(value, Ordering::Release);
        match filled.first() {
            Some(&b) if b != TLS_HANDSHAKE_RECORD && b != TLS_ALERT_RECORD => {
                Err(io::Error::new(io::ErrorKind::InvalidData, "the peer does not speak TLS"))
            }
            _ => Ok(()),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if !self.decided {
            let filled = buf.filled()[before..].to_vec();
            self.note(&result, &filled)?;
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    /// Passed through, or every TLS record would be its own `send`: rustls hands its
    /// queued records over as one vectored write, and the default of this method writes
    /// only the first of them.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
