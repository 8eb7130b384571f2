//! `securexfer trust`: which key a server presents over protocol 4, checked against
//! `known_servers` (trust on first use, a changed key refused) or against a fingerprint
//! the operator gave.

use super::UsageError;
use super::out::outln;
use super::send::normalize_server;
use crate::cli::TrustArgs;
use securexfer::client::home::Home;
use securexfer::client::trust::{self, KNOWN_SERVERS, KnownServers, TrustError};
use std::process::ExitCode;
use std::time::Duration;

pub fn run(args: TrustArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env().ok_or_else(|| {
        UsageError("neither XDG_CONFIG_HOME nor HOME is set: no place for known_servers".into())
    })?;
    let server = args
        .server
        .clone()
        .or_else(|| home.default_server())
        .ok_or_else(|| UsageError("no server: pass --server HOST:PORT".into()))?;
    let server = normalize_server(&server)?;
    if let Some(pin) = &args.fingerprint
        && !securexfer::crypto::fingerprint::is_valid(pin)
    {
        return Err(UsageError(format!(
            "--fingerprint {pin:?} is not a fingerprint: it looks like SHA256: and 43 base64 \
             characters, as `securexfer db fingerprint` prints it on the server"
        ))
        .into());
    }
    let mut known = KnownServers::load(&home.root().join(KNOWN_SERVERS))?;
    let before = known.get(&server).map(str::to_owned);
    let expected = args.fingerprint.clone().or_else(|| before.clone());
    let timeout = Duration::from_secs(args.connect_timeout.max(1));
    let presented = match trust::presented_key(&server, expected.as_deref(), timeout) {
        Ok(key) => key,
        Err(TrustError::KeyMismatch { server, expected, presented }) => {
            warn_mismatch(&server, &expected, &presented, &known, args.fingerprint.is_some());
            return Err(TrustError::KeyMismatch { server, expected, presented }.into());
        }
        Err(e) => return Err(e.into()),
    };
    let path = known.path().display().to_string();
    match (&args.fingerprint, &before) {
        (None, Some(_)) => outln!("{server} presents the key trusted for it: {presented}"),
        (None, None) => {
            known.trust(&server, &presented)?;
            outln!(
                "{server} is trusted on first use: its key is {presented} (compare it with \
                 `securexfer db fingerprint` on the server); saved in {path}"
            );
        }
        (Some(_), Some(old)) if *old == presented => {
            outln!("{server} presents the key given, already trusted for it: {presented}")
        }
        (Some(_), old) => {
            known.trust(&server, &presented)?;
            match old {
                Some(old) => outln!(
                    "{server} presents the key given, {presented}: trusted now instead of {old}; \
                     saved in {path}"
                ),
                None => outln!("{server} presents the key given, {presented}; saved in {path}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The warning ssh users know, on stderr, for a key that is not the one trusted.
pub(super) fn warn_mismatch(
    server: &str,
    expected: &str,
    presented: &str,
    known: &KnownServers,
    pin: bool,
) {
    let rule = "@".repeat(64);
    let what = if pin {
        format!("the --fingerprint given, {expected}")
    } else {
        format!("the key trusted for it in {}, {expected}", known.path().display())
    };
    eprintln!(
        "{rule}\n@    WARNING: THE KEY OF {server} IS NOT THE ONE EXPECTED\n{rule}\n\
         Someone could be intercepting the connection (a man-in-the-middle attack), or the\n\
         server's key was replaced. {server} presented {presented},\nnot {what}.\n\
         Nothing was sent. If the server's operator confirms the new key (`securexfer db\n\
         fingerprint` on the server), accept it with:\n  \
         securexfer trust --server {server} --fingerprint {presented}"
    );
}
