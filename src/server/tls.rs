//! Protocol 4's way in: telling a TLS connection from a protocol-3 one on the shared port,
//! and the TLS 1.3 handshake with its required client certificate (issue 14). What follows
//! the handshake is [`super::v4`]'s. The detection rule itself is
//! [`crate::protocol::sniff::classify`].

use super::Shared;
use super::identity::ServerIdentity;
use super::slots::Slot;
use super::v4::Handshake;
use super::v4::client_key::{ClientKeyVerifier, is_ed25519, spki_of};
use crate::protocol::sniff::{SNIFF_LEN, Sniff, classify};
use crate::protocol::v4::UPGRADE_EXPORTER_LABEL;
use crate::store::ClientKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

use super::metrics::Counted;
use super::read_ahead::ReadAhead;

/// A protocol-4 connection once its handshake is done.
/// Its bytes are counted as they arrive (`securexfer_received_bytes_total`, as protocol 3's).
pub(crate) type ServerTls = tokio_rustls::server::TlsStream<ReadAhead<Counted<TcpStream>>>;
use tokio::sync::watch;
use tracing::{info, warn};

/// The ALPN protocol name of protocol 4. A TLS client that does not offer it is refused:
/// it would be some other TLS client that found the wrong port.
pub const ALPN: &[u8] = b"securexfer/4";
/// How long to wait between looks at a connection that sent part of a TLS record header.
/// Clients send a whole ClientHello at once, so this is rare; it keeps the look from
/// spinning while the socket stays readable with the same few bytes.
const SNIFF_RETRY: Duration = Duration::from_millis(10);

/// The TLS configuration: TLS 1.3 only, the ring provider, the server's certificate,
/// ALPN `securexfer/4`, a client certificate required (an Ed25519 key: see
/// [`ClientKeyVerifier`]), no session tickets (nothing to resume).
pub fn server_config(
    identity: &ServerIdentity,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientKeyVerifier::new()))
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

/// Serves one protocol-4 connection: the TLS handshake within the request deadline, then
/// protocol 4's requests ([`super::v4`]).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let deadline = shared.config.request_deadline;
    let stream = shared.metrics.count_received(stream);
    let tls = match tokio::time::timeout(deadline, handshake(stream, Arc::clone(&shared.tls))).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(why)) => return warn!("protocol-4 connection refused: {why}"),
        Err(_) => {
            return warn!("protocol-4 connection refused: no TLS handshake within {deadline:?}");
        }
    };
    let Some(handshake) = what_the_handshake_proved(&tls, &shared) else {
        return warn!("protocol-4 connection refused: no usable client key after the handshake");
    };
    let (_, connection) = tls.get_ref();
    let version = connection.protocol_version();
    let alpn = connection.alpn_protocol().map(String::from_utf8_lossy).unwrap_or_default();
    info!(
        ?version,
        client_key = %crate::crypto::fingerprint::of(&handshake.key.spki),
        "protocol-4 connection from {peer}: handshake complete (ALPN {alpn})"
    );
    super::v4::serve(shared, tls, peer, handshake, stop).await;
}

/// The client's key (the verifier already checked it is one Ed25519 certificate), the
/// connection's exporter value for `UPGRADE`, and the server key's fingerprint.
fn what_the_handshake_proved(tls: &ServerTls, shared: &Shared) -> Option<Handshake> {
    let (_, connection) = tls.get_ref();
    let spki = spki_of(connection.peer_certificates()?.first()?)?;
    if !is_ed25519(&spki) {
        return None;
    }
    let mut exporter = [0u8; 32];
    connection.export_keying_material(&mut exporter, UPGRADE_EXPORTER_LABEL, Some(b"")).ok()?;
    let key = ClientKey { fingerprint: crate::crypto::fingerprint::raw(&spki), spki };
    Some(Handshake { key, exporter, server_fingerprint: shared.server_fingerprint })
}

/// The TLS handshake, refusing a client that does not offer ALPN `securexfer/4` before it
/// starts (rustls alone would complete a handshake without ALPN).
async fn handshake(
    stream: Counted<TcpStream>,
    config: Arc<rustls::ServerConfig>,
) -> Result<ServerTls, String> {
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(
        rustls::server::Acceptor::default(),
        ReadAhead::new(stream),
    );
    let start = acceptor.await.map_err(|e| format!("not a usable TLS ClientHello ({e})"))?;
    let offered = start.client_hello().alpn().is_some_and(|mut names| names.any(|n| n == ALPN));
    if !offered {
        return Err("the client does not offer ALPN securexfer/4".to_owned());
    }
    start.into_stream(config).await.map_err(|e| format!("TLS handshake failed ({e})"))
}
