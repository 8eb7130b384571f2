//! `securexfer register`: make a key pair, register, save the identity.

use super::UsageError;
use super::out::outln;
use super::send::{client_for, new_identity_path, save_registration, server_and_name};
use crate::cli::RegisterArgs;
use securexfer::client::identity::IdentityError;
use std::process::ExitCode;

pub fn run(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let (server, name) = server_and_name(&args.client, None)?;
    let name = name.ok_or_else(|| {
        UsageError("no client name: pass --name NAME (or put it on line 2 of transfer.info)".into())
    })?;
    let path = new_identity_path(args.client.identity.as_deref(), &server);
    if path.exists() && !args.force {
        return Err(IdentityError::Exists(path).into());
    }
    let mut client = client_for(&server, &args.client);
    client.connect()?;
    let session = client.register(&name)?;
    let backup = save_registration(&session.identity, &path, &server)?;
    if !args.quiet {
        outln!(
            "registered {name} as {} with {server}; identity saved to {} (private key in priv.key beside it){}",
            session.identity.id,
            path.display(),
            backup
                .map(|b| format!("; the previous one is kept as {}", b.display()))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
