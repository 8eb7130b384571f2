//! The requests about who the client is: `HELLO` (is this key a client here?),
//! `REGISTER` (make it one, under the registration policy) and `UPGRADE` (attach it to a
//! protocol-3 record, proven with that record's RSA key).

use super::driver::{Connection, Ended};
use super::errors;
use crate::crypto::PublicKey;
use crate::crypto::invite::hash_token;
use crate::protocol::v4::{
    ErrorCode, FrameType, Hello, MAX_DATA_PAYLOAD, MINOR_VERSION, Register, Registered,
    Registration, UPGRADE_SIGNATURE_LEN, Upgrade, Welcome, names, upgrade_statement,
};
use crate::protocol::{ClientId, PublicKeyField};
use crate::store::{Attached, NewClient, Registered as Outcome, Usage};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

/// Unanswered requests the server reads ahead, as `WELCOME` announces it: twice a group
/// of commits in requests (two per small file), so that a pipelining client's next group
/// arrives while the one before it is stored.
pub const MAX_IN_FLIGHT: u16 = 128;
/// Uploads one client may have open at once, as `WELCOME` announces it.
pub const MAX_OPEN_PUTS: u16 = 64;
/// What `WELCOME` says the server is.
const SOFTWARE: &str = concat!("securexfer ", env!("CARGO_PKG_VERSION"));

/// Seconds since 1970, for `WELCOME` and the message of an `internal` error.
pub(super) use crate::clock::unix_secs as unix_now;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// `WELCOME`: the connection's version, the policy, and who the key is here.
    pub(super) async fn welcome(&mut self, hello: Hello) -> Result<(), Ended> {
        let fingerprint = self.handshake.key.fingerprint;
        let record = self.shared.records().client_by_key(fingerprint).await;
        let record = self.internal_on_error(record)?;
        let (mut usage, mut quota) = (Usage::default(), (0, 0));
        if let Some(record) = &record {
            self.machine.registered(record.id);
            self.name.clone_from(&record.name);
            let used = self.shared.records().usage(record.id).await;
            usage = self.internal_on_error(used)?;
            let limits = self.shared.records().quota(record.id).await;
            let limits = self.internal_on_error(limits)?;
            quota = (limits.bytes.unwrap_or(u64::MAX), limits.files.unwrap_or(u64::MAX));
            let _ = self.shared.records().touch(record.id).await;
            tracing::Span::current().record("client", tracing::field::display(record.id));
        }
        info!(
            software = %hello.software, registered = record.is_some(),
            "protocol-4 client said HELLO"
        );
        let welcome = Welcome {
            // The lower of the two minors (4.0 is the only one so far, so always 0).
            minor: MINOR_VERSION,
            registration: self.shared.config.registration,
            registered: record.is_some(),
            client_id: record.as_ref().map_or(ClientId::ZERO, |r| r.id),
            max_data: MAX_DATA_PAYLOAD,
            max_in_flight: MAX_IN_FLIGHT,
            max_open_puts: MAX_OPEN_PUTS,
            max_file_size: self.shared.config.max_file_size,
            resume_window: if self.shared.keeps_unfinished() {
                u32::try_from(self.shared.config.resume_window.as_secs()).unwrap_or(u32::MAX)
            } else {
                0
            },
            bytes_used: usage.bytes,
            bytes_quota: quota.0,
            files_used: usage.files,
            files_quota: quota.1,
            now: unix_now(),
            name: self.name.clone(),
            software: SOFTWARE.to_owned(),
        };
        let payload = welcome.encode().map_err(|e| Ended::Gone(std::io::Error::other(e)))?;
        self.send(FrameType::Welcome, 0, &payload).await?;
        Ok(())
    }

    /// `REGISTER`: a new client with this key, if the policy, the name, the rate limit
    /// and the token allow.
    pub(super) async fn register(&mut self, tag: u32, register: Register) -> Result<(), Ended> {
        let policy = self.shared.config.registration;
        let refused = match (policy, register.token) {
            (Registration::Closed, _) => {
                Some(errors::registration_refused("registration is closed on this server"))
            }
            (Registration::Token, None) => Some(errors::registration_refused(
                "this server registers new clients only with an invitation token",
            )),
            _ => None,
        };
        if let Some(error) = refused {
            return self.refuse(tag, &error).await;
        }
        if let Err(e) = names::check_client_name(&register.name) {
            let error =
                errors::plain(ErrorCode::NameRefused, false, &format!("client name refused: {e}"));
            return self.refuse(tag, &error).await;
        }
        if let Some(error) = self.take_registration().await {
            return self.refuse(tag, &error).await;
        }
        // Under `open` a token is not needed, and is not consumed either.
        let token_hash = match policy {
            Registration::Token => register.token.as_ref().map(hash_token),
            _ => None,
        };
        let new = NewClient {
            id: ClientId::random(),
            name: register.name.clone(),
            key: self.handshake.key.clone(),
            ip: self.peer.ip(),
            token_hash,
        };
        let id = new.id;
        let outcome = self.shared.records().register_with_key(new).await;
        let error = match self.internal_on_error(outcome)? {
            Outcome::Done => return self.registered(tag, id, register.name, "registered").await,
            Outcome::NameTaken => {
                errors::plain(ErrorCode::NameTaken, false, "another client has this name")
            }
            Outcome::KeyTaken => errors::already_registered(),
            Outcome::TokenRefused => errors::registration_refused(
                "the invitation token is unknown, used, expired, or for another name",
            ),
        };
        self.refuse(tag, &error).await
    }

    /// `UPGRADE`: this key attached to the protocol-3 record whose RSA key signed the
    /// statement bound to this connection. Every failure before the signature verifies
    /// gets the same answer, so that it tells nothing about which ids exist.
    pub(super) async fn upgrade(&mut self, tag: u32, upgrade: Upgrade) -> Result<(), Ended> {
        if let Some(error) = self.take_registration().await {
            return self.refuse(tag, &error).await;
        }
        let record = self.shared.records().client(upgrade.client_id).await;
        let record = self.internal_on_error(record)?;
        let key = record
            .as_ref()
            .filter(|r| r.name == upgrade.name)
            .and_then(|r| r.public_key.as_deref())
            .and_then(|k| Some(PublicKeyField(k.try_into().ok()?)))
            .and_then(|field| PublicKey::from_field(&field).ok());
        let statement = upgrade_statement(
            &self.handshake.exporter,
            &self.handshake.server_fingerprint,
            &self.handshake.key.fingerprint,
            &upgrade.client_id,
            &upgrade.name,
        );
        let proven = match (key, statement) {
            (Some(key), Some(statement)) => {
                upgrade.signature.len() == UPGRADE_SIGNATURE_LEN
                    && key.verify_pkcs1v15_sha256(&statement, &upgrade.signature)
            }
            _ => false,
        };
        if !proven {
            warn!(client = %upgrade.client_id, "protocol-4 upgrade refused: no such record or the proof does not verify");
            return self.refuse(tag, &errors::upgrade_refused()).await;
        }
        let attached =
            self.shared.records().attach_key(upgrade.client_id, self.handshake.key.clone()).await;
        let error = match self.internal_on_error(attached)? {
            Attached::Done => {
                info!(client = %upgrade.client_id, "protocol 3 is refused for this client from now on (upgraded to protocol 4)");
                return self.registered(tag, upgrade.client_id, upgrade.name, "upgraded").await;
            }
            Attached::NoClient => errors::upgrade_refused(),
            Attached::AlreadyHasKey => errors::plain(
                ErrorCode::Conflict,
                false,
                "this client already has a protocol-4 key",
            ),
            Attached::KeyTaken => errors::already_registered(),
        };
        self.refuse(tag, &error).await
    }

    /// `REGISTERED`: the connection is client `id` from now on.
    async fn registered(
        &mut self,
        tag: u32,
        id: ClientId,
        name: String,
        what: &str,
    ) -> Result<(), Ended> {
        self.machine.registered(id);
        tracing::Span::current().record("client", tracing::field::display(id));
        info!(%name, client = %id, "protocol-4 client {what}");
        self.name.clone_from(&name);
        let payload = Registered { client_id: id, name }
            .encode()
            .map_err(|e| Ended::Gone(std::io::Error::other(e)))?;
        self.send(FrameType::Registered, tag, &payload).await?;
        Ok(())
    }

    /// Takes one of the address's registrations (shared with protocol 3's 1025), or the
    /// `rate_limited` answer.
    async fn take_registration(&mut self) -> Option<crate::protocol::v4::ErrorFrame> {
        let wait = self.shared.take_registration(self.peer.ip()).await.err()?;
        Some(errors::rate_limited(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX)))
    }

    /// The value of a records call, or an `internal` refusal (logged) that the caller
    /// answers with; the connection goes on.
    pub(super) fn internal_on_error<T>(
        &self,
        result: Result<T, crate::store::RecordsError>,
    ) -> Result<T, Ended> {
        result.map_err(|e| {
            let at = unix_now();
            tracing::error!(at, "protocol-4 request failed in the records: {e}");
            Ended::Refused(errors::internal(at))
        })
    }
}
