//! `securexfer register`: over protocol 4, register this server's client key (with an
//! invitation token when the server asks for one); over protocol 3, make a key pair,
//! register and save the identity.

use super::out::outln;
use super::send::{client_for, new_identity_path, save_registration, server_and_name};
use super::v4::{self, Spoken};
use super::{LocalError, UsageError};
use crate::cli::RegisterArgs;
use securexfer::client::home::Home;
use securexfer::client::identity::IdentityError;
use securexfer::crypto::invite::InviteToken;
use std::process::ExitCode;

pub fn run(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let (server, name) = server_and_name(&args.client, None)?;
    let name = name.ok_or_else(|| {
        UsageError("no client name: pass --name NAME (or put it on line 2 of transfer.info)".into())
    })?;
    let token = args
        .token
        .as_deref()
        .map(|t| t.parse::<InviteToken>().map(|t| t.0))
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    let path = new_identity_path(args.client.identity.as_deref(), &server);
    if path.exists() && !args.force {
        return Err(IdentityError::Exists(path).into());
    }
    match v4::connect(&server, &args.client)? {
        Spoken::Four(four) => register_v4(*four, &server, &name, token, args.quiet),
        Spoken::Three if token.is_some() => Err(UsageError(format!(
            "--token is for protocol 4, and {server} is spoken protocol 3: it cannot carry a token"
        ))
        .into()),
        Spoken::Three => register_v3(&args, &server, &name, &path),
    }
}

fn register_v4(
    mut four: v4::Four,
    server: &str,
    name: &str,
    token: Option<[u8; 16]>,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    if four.session.registered() {
        let (id, known_as) = four.session.client();
        let message = format!(
            "the client key {} is already registered with {server} as {known_as} ({id}); a \
             key is registered once (move it away to register anew)",
            four.key_path.display()
        );
        four.close();
        return Err(LocalError(message).into());
    }
    let registered = four.runtime.block_on(four.session.register(name, token));
    let key_path = four.key_path.clone();
    four.close();
    let registered = registered?;
    if let Some(home) = Home::from_env()
        && let Err(e) = home.set_default_server(server)
    {
        eprintln!("securexfer: warning: cannot remember {server} as the default server: {e}");
    }
    if !quiet {
        outln!(
            "registered {} as {} with {server} over protocol 4; the client key is {}",
            registered.name,
            registered.client_id,
            key_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn register_v3(
    args: &RegisterArgs,
    server: &str,
    name: &str,
    path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    super::send::check_name(name)?;
    let mut client = client_for(server, &args.client);
    client.connect()?;
    let session = client.register(name)?;
    let backup = save_registration(&session.identity, path, server)?;
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
