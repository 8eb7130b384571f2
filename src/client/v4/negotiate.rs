//! Which protocol the client speaks to a server, as pure decisions with no sockets and no
//! clocks of their own (docs/protocol-v4.md, "Client trust"): what `--protocol` and
//! `known_servers` allow before connecting, and what the first reply to a ClientHello says
//! about a server never seen before.
//!
//! The rule that matters: **a server once seen speaking 4 is never spoken 3 to again**,
//! whatever the flag, until the user removes its line. Protocol 3 does not authenticate the
//! server, so falling back to it is exactly what an attacker in the middle would arrange;
//! it is allowed only for a server the client has never seen speak 4, with a warning.

use crate::client::trust::{Known, PROTOCOL3_MEMORY_SECS};
use thiserror::Error;

/// How long a peer may stay silent after the ClientHello before it is taken for a
/// protocol-3-only server. Older securexfer servers answer a ClientHello at once (2107),
/// but a peer that waits for the payload its hello's random bytes announce would otherwise
/// keep the client until its own timeout.
pub const PROBE_SILENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// The first byte of a TLS record of type handshake.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The first byte of a TLS record of type alert.
pub const TLS_ALERT_RECORD: u8 = 0x15;

/// `--protocol`: which protocol the user allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolChoice {
    /// Protocol 3 only (refused for a server known to speak 4).
    Three,
    /// Protocol 4 only.
    Four,
    /// Protocol 4, or 3 for a server never seen speaking 4 that does not speak it.
    Auto,
}

/// What to do before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Speak protocol 3 at once. `remembered`: `known_servers` says the server spoke only
    /// 3 less than a day ago (the probe is skipped); otherwise `--protocol 3` asked for it.
    Speak3 {
        /// From a protocol-3 line.
        remembered: bool,
    },
    /// Open with a TLS ClientHello.
    Speak4 {
        /// The key the server must present (`known_servers` or the pin); `None`: trust on
        /// first use.
        expected: Option<String>,
        /// Whether a peer found to speak only protocol 3 may be spoken 3 to (`auto` with a
        /// server never seen speaking 4, and no pin).
        may_fall_back: bool,
    },
}

/// Why the client will not connect as asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// `--protocol 3` to a server known to speak 4.
    #[error(
        "{server} is known to speak protocol 4 (its key is in known_servers), so protocol 3, \
         which does not authenticate the server, is never spoken to it; nothing was sent \
         (remove its line from known_servers to allow protocol 3 again)"
    )]
    KnownServer {
        /// `HOST:PORT`.
        server: String,
    },
    /// A pin that disagrees with the key trusted for the server.
    #[error(
        "--server-fingerprint {pin} is not the key trusted for {server} in known_servers, \
         {known}; nothing was sent"
    )]
    PinDisagrees {
        /// `HOST:PORT`.
        server: String,
        /// The pin.
        pin: String,
        /// The trusted key.
        known: String,
    },
    /// A pin with `--protocol 3`, which has no key to check.
    #[error("--server-fingerprint needs protocol 4: protocol 3 has no server key to check")]
    PinWithProtocol3,
}

/// What the client may do with `server` given the flag, the pin and what `known_servers`
/// says about it, at `now` (seconds since 1970).
pub fn plan(
    server: &str,
    choice: ProtocolChoice,
    known: Option<&Known>,
    pin: Option<&str>,
    now: i64,
) -> Result<Plan, Refusal> {
    match known {
        Some(Known::Key { key, .. }) => {
            if choice == ProtocolChoice::Three {
                return Err(Refusal::KnownServer { server: server.to_owned() });
            }
            if let Some(pin) = pin.filter(|p| p != key) {
                return Err(Refusal::PinDisagrees {
                    server: server.to_owned(),
                    pin: pin.to_owned(),
                    known: key.clone(),
                });
            }
            Ok(Plan::Speak4 { expected: Some(key.clone()), may_fall_back: false })
        }
        _ if choice == ProtocolChoice::Three => match pin {
            Some(_) => Err(Refusal::PinWithProtocol3),
            None => Ok(Plan::Speak3 { remembered: false }),
        },
        Some(Known::Protocol3 { at })
            if choice == ProtocolChoice::Auto
                && pin.is_none()
                && (0..PROTOCOL3_MEMORY_SECS).contains(&(now - at)) =>
        {
            Ok(Plan::Speak3 { remembered: true })
        }
        _ => Ok(Plan::Speak4 {
            expected: pin.map(str::to_owned),
            may_fall_back: choice == ProtocolChoice::Auto && pin.is_none(),
        }),
    }
}

/// What the peer did after the ClientHello, before the TLS handshake finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstReply {
    /// Its first byte.
    Byte(u8),
    /// It closed (or reset) the connection before sending anything.
    Closed,
    /// Nothing for [`PROBE_SILENCE`].
    Silent,
}

/// What the first reply says about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A TLS record: the peer speaks TLS. Whatever happens next (a completed handshake, an
    /// alert, a failure) is protocol 4's business and never a reason to speak 3.
    Tls,
    /// A byte that cannot start a TLS record, a close, or silence: a protocol-3-only peer.
    Protocol3Only,
}

/// Classifies the first reply to a ClientHello.
pub fn classify(reply: FirstReply) -> Probe {
    match reply {
        FirstReply::Byte(TLS_HANDSHAKE_RECORD | TLS_ALERT_RECORD) => Probe::Tls,
        FirstReply::Byte(_) | FirstReply::Closed | FirstReply::Silent => Probe::Protocol3Only,
    }
}

/// The warning printed when falling back to protocol 3.
pub fn fallback_warning(server: &str) -> String {
    format!(
        "warning: {server} does not speak protocol 4; protocol 3 does not authenticate the \
         server, and anyone on the network path can read or change this transfer"
    )
}
