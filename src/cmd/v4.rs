//! How `register` and `send` reach a server: the protocol `--protocol` and known_servers
//! allow, the protocol-4 dial with trust on first use or the pinned key, the fallback to
//! protocol 3 with its warning, and the upgrade of a protocol-3 identity. What is printed
//! on stderr about trust is said here, once, for both commands.

use super::UsageError;
use crate::cli::{ClientArgs, ProtocolArg};
use anyhow::Context;
use securexfer::client::home::Home;
use securexfer::client::identity::Identity;
use securexfer::client::trust::{KNOWN_SERVERS, KnownServers, now_secs};
use securexfer::client::v4::conn::Connection;
use securexfer::client::v4::error::V4Error;
use securexfer::client::v4::key::ClientKey;
use securexfer::client::v4::negotiate::{self, Plan, ProtocolChoice};
use securexfer::client::v4::session::Session;
use securexfer::client::v4::tls::{self, DialError};
use std::path::PathBuf;
use std::time::Duration;

/// The protocol a command goes on with.
pub enum Spoken {
    /// Protocol 3, as before protocol 4 (the caller's own client).
    Three,
    /// A protocol-4 session after `WELCOME`.
    Four(Box<Four>),
}

/// A protocol-4 session and what the caller reports about it.
pub struct Four {
    /// The session.
    pub session: Session,
    /// The runtime it lives on.
    pub runtime: tokio::runtime::Runtime,
    /// Where the client key is.
    pub key_path: PathBuf,
    /// The key's raw fingerprint (for an upgrade).
    pub key_fp: [u8; 32],
    /// `SHA256:…` of the client key.
    pub key_fingerprint: String,
}

/// The software text `HELLO` carries.
fn software() -> String {
    format!("securexfer {}", env!("CARGO_PKG_VERSION"))
}

/// Decides the protocol for `server` and, for protocol 4, connects and says `HELLO`.
pub fn connect(server: &str, args: &ClientArgs) -> anyhow::Result<Spoken> {
    let choice = match args.protocol {
        ProtocolArg::Three => ProtocolChoice::Three,
        ProtocolArg::Four => ProtocolChoice::Four,
        ProtocolArg::Auto => ProtocolChoice::Auto,
    };
    let pin = args.server_fingerprint.as_deref();
    if let Some(pin) = pin
        && !securexfer::crypto::fingerprint::is_valid(pin)
    {
        return Err(UsageError(format!(
            "--server-fingerprint {pin:?} is not a fingerprint: it looks like SHA256: and 43 \
             base64 characters, as `securexfer db fingerprint` prints it on the server"
        ))
        .into());
    }
    let Some(home) = Home::from_env() else {
        // Without a home there is no known_servers and no place for a client key.
        return match choice {
            ProtocolChoice::Three | ProtocolChoice::Auto if pin.is_none() => Ok(Spoken::Three),
            _ => Err(UsageError(
                "neither XDG_CONFIG_HOME nor HOME is set: no place for known_servers and the \
                 protocol-4 client key"
                    .into(),
            )
            .into()),
        };
    };
    let mut known = KnownServers::load(&home.root().join(KNOWN_SERVERS))?;
    let plan = negotiate::plan(server, choice, known.entry(server), pin, now_secs())?;
    match plan {
        Plan::Speak3 { remembered } => {
            if remembered {
                eprintln!("securexfer: {}", negotiate::fallback_warning(server));
            }
            Ok(Spoken::Three)
        }
        Plan::Speak4 { expected, may_fall_back } => {
            speak4(server, args, &home, &mut known, expected, may_fall_back)
        }
    }
}

fn speak4(
    server: &str,
    args: &ClientArgs,
    home: &Home,
    known: &mut KnownServers,
    expected: Option<String>,
    may_fall_back: bool,
) -> anyhow::Result<Spoken> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the client's runtime")?;
    let key_path = home.client_key_path(server);
    let (key, _made) = ClientKey::load_or_create(&key_path).map_err(V4Error::from)?;
    let connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    let had_line = known.get(server).is_some();
    let dialed = runtime.block_on(tls::dial(server, &key, expected.clone(), connect_timeout));
    let dialed = match dialed {
        Ok(dialed) => dialed,
        Err(DialError::Protocol3Only { .. }) if may_fall_back => {
            eprintln!("securexfer: {}", negotiate::fallback_warning(server));
            if let Err(e) = known.remember_protocol3(server, now_secs()) {
                eprintln!(
                    "securexfer: warning: cannot remember that {server} speaks protocol 3: {e}"
                );
            }
            return Ok(Spoken::Three);
        }
        Err(DialError::KeyMismatch { server, expected, presented }) => {
            super::trust::warn_mismatch(&server, &expected, &presented, known, !had_line);
            return Err(
                V4Error::Dial(DialError::KeyMismatch { server, expected, presented }).into()
            );
        }
        Err(e) if had_line => {
            return Err(anyhow::Error::new(V4Error::Dial(e)).context(format!(
                "{server} is known to speak protocol 4 (known_servers), so protocol 3 was not tried"
            )));
        }
        Err(e) => return Err(V4Error::Dial(e).into()),
    };
    if expected.is_none() {
        eprintln!(
            "securexfer: new server {server}, key fingerprint {}; trusted from now on (saved \
             in {}; compare it with `securexfer db fingerprint` on the server)",
            dialed.server_key,
            known.path().display()
        );
    }
    if !had_line {
        known.trust(server, &dialed.server_key)?;
    }
    let io_timeout = Duration::from_secs(args.timeout.max(1));
    // The connection's reader task is spawned on the runtime, so it starts inside it.
    let session = runtime
        .block_on(async { Session::open(Connection::start(dialed, io_timeout), &software()).await })
        .map_err(anyhow::Error::new)?;
    Ok(Spoken::Four(Box::new(Four {
        session,
        runtime,
        key_path,
        key_fp: key.raw_fingerprint(),
        key_fingerprint: key.fingerprint(),
    })))
}

impl Four {
    /// Attaches the client key to the protocol-3 record of `identity` (`UPGRADE`), saying
    /// so on stderr: from then on the server knows this client by its key.
    pub fn upgrade(&mut self, server: &str, identity: &Identity) -> anyhow::Result<()> {
        eprintln!(
            "securexfer: {server} speaks protocol 4: upgrading {} ({}) to the protocol-4 key \
             {} in {}, proven with its protocol-3 key",
            identity.name,
            identity.id,
            self.key_fingerprint,
            self.key_path.display()
        );
        let registered = self.runtime.block_on(self.session.upgrade(identity, &self.key_fp))?;
        eprintln!(
            "securexfer: upgraded {} ({}): {server} now knows this client by its protocol-4 key \
             and refuses protocol 3 for it",
            registered.name, registered.client_id
        );
        Ok(())
    }

    /// Closes the session (close_notify).
    pub fn close(self) {
        let Four { session, runtime, .. } = self;
        runtime.block_on(session.close());
    }
}
