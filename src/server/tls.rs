//! Protocol 4's way in: telling a TLS connection from a protocol-3 one on the shared port,
//! and the TLS 1.3 handshake (issue 14, first step).
//!
//! This step completes the handshake and closes cleanly (close_notify): requests come
//! with the next step. The detection rule itself is [`crate::protocol::sniff::classify`].

use super::identity::ServerIdentity;
use super::slots::Slot;
use crate::protocol::sniff::{SNIFF_LEN, Sniff, classify};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The ALPN protocol name of protocol 4. A TLS client that does not offer it is refused:
/// it would be some other TLS client that found the wrong port.
pub const ALPN: &[u8] = b"securexfer/4";
/// How long to wait between looks at a connection that sent part of a TLS record header.
/// Clients send a whole ClientHello at once, so this is rare; it keeps the look from
/// spinning while the socket stays readable with the same few bytes.
const SNIFF_RETRY: Duration = Duration::from_millis(10);
/// How long the peer's own close_notify may take after ours before the socket closes.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The TLS configuration: TLS 1.3 only, the ring provider, the server's certificate,
/// ALPN `securexfer/4`, no client certificates yet, no session tickets (nothing to resume).
pub fn server_config(
    identity: &ServerIdentity,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.certificate()], identity.private_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// What a look at a new connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A ClientHello: protocol 4.
    Tls,
    /// Protocol 3 (or a connection the protocol-3 path must end as it always has: the
    /// server is stopping, the slot is wanted, the peer closed or stalled mid-header).
    Protocol3,
    /// Nothing arrived within the idle timeout: the connection ends as protocol 3 would
    /// end a silent one.
    Silent,
}

/// Peeks (without consuming anything) at the first bytes of `stream` until they decide
/// the protocol. While nothing has arrived the slot counts as idle, exactly as a protocol-3
/// connection waiting for its first request, so eviction and shutdown reach it; those and
/// a stall after the first byte hand the connection to the protocol-3 path, which ends it
/// as it ends any other (the eviction notice is passed on). At most `idle` is spent here.
pub(crate) async fn sniff(
    stream: &TcpStream,
    slot: &Slot,
    shutdown: &mut watch::Receiver<bool>,
    idle: Duration,
) -> Sniffed {
    slot.set_idle(true);
    let evict = Arc::clone(&slot.evict);
    let mut seen = 0;
    let look = async {
        let mut buf = [0u8; SNIFF_LEN];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(n) => n,
                Err(_) => return Sniffed::Protocol3,
            };
            seen = n;
            match classify(&buf[..n]) {
                Sniff::Tls => return Sniffed::Tls,
                Sniff::Protocol3 => return Sniffed::Protocol3,
                // 0 bytes: the peer closed before sending anything.
                Sniff::NeedMore if n == 0 => return Sniffed::Protocol3,
                Sniff::NeedMore => tokio::time::sleep(SNIFF_RETRY).await,
            }
        }
    };
    let decided = tokio::select! {
        biased;
        _ = shutdown.changed() => Sniffed::Protocol3,
        () = evict.notified() => {
            evict.notify_one();
            Sniffed::Protocol3
        }
        decided = tokio::time::timeout(idle, look) => decided.unwrap_or(Sniffed::Silent),
    };
    match decided {
        Sniffed::Silent if seen > 0 => Sniffed::Protocol3,
        other => other,
    }
}

/// Serves one protocol-4 connection: the TLS handshake within `deadline`, then, in this
/// first step, a clean close.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    deadline: Duration,
) {
    match tokio::time::timeout(deadline, handshake(stream, config)).await {
        Ok(Ok(tls)) => close(tls, peer).await,
        Ok(Err(why)) => warn!("protocol-4 connection refused: {why}"),
        Err(_) => warn!("protocol-4 connection refused: no TLS handshake within {deadline:?}"),
    }
}

/// The TLS handshake, refusing a client that does not offer ALPN `securexfer/4` before it
/// starts (rustls alone would complete a handshake without ALPN).
async fn handshake(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = acceptor.await.map_err(|e| format!("not a usable TLS ClientHello ({e})"))?;
    let offered = start.client_hello().alpn().is_some_and(|mut names| names.any(|n| n == ALPN));
    if !offered {
        return Err("the client does not offer ALPN securexfer/4".to_owned());
    }
    start.into_stream(config).await.map_err(|e| format!("TLS handshake failed ({e})"))
}

/// Sends close_notify, then gives the peer a moment for its own, so that closing does not
/// reset a connection with the peer's last bytes unread.
async fn close(mut tls: tokio_rustls::server::TlsStream<TcpStream>, peer: SocketAddr) {
    let (_, connection) = tls.get_ref();
    let version = connection.protocol_version();
    let alpn = connection.alpn_protocol().map(String::from_utf8_lossy).unwrap_or_default();
    info!(
        ?version,
        "protocol-4 connection from {peer}: handshake complete (ALPN {alpn}); protocol 4 \
         requests are not served yet"
    );
    if let Err(e) = tls.shutdown().await {
        debug!("could not send close_notify: {e}");
        return;
    }
    let mut sink = [0u8; 512];
    let drain = async { while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
}
