//! `securexfer register`: make a key pair, register, save the identity.

use super::UsageError;
use super::out::outln;
use super::send::{client_for, server_and_name};
use crate::cli::RegisterArgs;
use securexfer::client::identity::{IdentityError, ME_INFO};
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let (server, name) = server_and_name(&args.client, None)?;
    let name = name.ok_or_else(|| {
        UsageError("no client name: pass --name NAME (or put it on line 2 of transfer.info)".into())
    })?;
    let path = args.client.identity.clone().unwrap_or_else(|| PathBuf::from(ME_INFO));
    if path.exists() && !args.force {
        return Err(IdentityError::Exists(path).into());
    }
    let mut client = client_for(&server, &args.client);
    client.connect()?;
    let session = client.register(&name)?;
    session.identity.save(&path, args.force)?;
    outln!(
        "registered {name} as {} with {server}; identity saved to {} (private key in priv.key beside it)",
        session.identity.id,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
