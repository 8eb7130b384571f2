//! One module per subcommand; this one dispatches and maps errors to exit codes.

pub(crate) mod config;
mod db;
mod dry_run;
mod fetch;
mod fetch_many;
mod migrate;
pub(crate) mod out;
mod partial;
mod progress;
mod register;
mod send;
mod serve;
mod table;
mod tree;
mod trust;
mod v4;
mod verify;

use crate::cli::{Cli, Command, DbCommand};
use securexfer::client::identity::IdentityError;
use securexfer::client::{ClientError, FailureKind};
use securexfer::store::DbError;
use std::process::ExitCode;

/// A local file that is missing or unusable (exit code 6), said in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LocalError(pub String);

/// A mistake in how the command was called: exit code 2, like clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let level = match (args.quiet, args.verbose) {
                (true, _) => Some("warn"),
                (false, 0) => None,
                (false, 1) => Some("info,securexfer=debug"),
                (false, _) => Some("info,securexfer=trace"),
            };
            init_server_logging(level, args.log_format == crate::cli::LogFormat::Json);
            serve::run(args)
        }
        Command::Register(args) => {
            init_client_logging(args.client.verbose);
            register::run(args)
        }
        Command::Send(args) => {
            init_client_logging(args.client.verbose);
            send::run(args)
        }
        Command::Ls(args) => {
            init_client_logging(args.client.verbose);
            fetch::ls(args)
        }
        Command::Get(args) => {
            init_client_logging(args.client.verbose);
            fetch::get(args)
        }
        Command::Rm(args) => {
            init_client_logging(args.client.verbose);
            fetch::rm(args)
        }
        Command::Db(DbCommand::Inspect(args)) => {
            init_logging("warn");
            db::inspect(args)
        }
        Command::Db(DbCommand::Verify(args)) => {
            init_logging("warn");
            verify::run(args)
        }
        Command::Db(DbCommand::Restore(args)) => {
            init_logging("warn");
            db::restore(args)
        }
        Command::Db(DbCommand::Fingerprint(args)) => {
            init_logging("warn");
            db::fingerprint(args)
        }
        Command::Db(DbCommand::Invite(args)) => {
            init_logging("warn");
            db::invite(args)
        }
        Command::Db(DbCommand::Quota(args)) => {
            init_logging("warn");
            db::quota(args)
        }
        Command::Db(DbCommand::Migrate(args)) => {
            init_logging("warn");
            migrate::run(args)
        }
        Command::Trust(args) => {
            init_logging("warn");
            trust::run(args)
        }
        Command::Completions(args) => {
            let script = crate::generate::completion(args.shell);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man(args) => {
            crate::generate::write_man_pages(&args.dir).map_err(|e| {
                anyhow::Error::new(e)
                    .context(format!("cannot write man pages to {}", args.dir.display()))
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logging for a client command: `-v` (given `verbose` times) is asked for on the command
/// line and wins over `RUST_LOG`; without it, `RUST_LOG` or warnings only.
fn init_client_logging(verbose: u8) {
    let level = match verbose {
        0 => return init_logging("warn"),
        1 => "warn,securexfer=debug",
        _ => "warn,securexfer=trace",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not for files, pipes and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The server's logging: `level` from -q/-v wins over `RUST_LOG` (default info); JSON
/// lines for log collectors, or text.
fn init_server_logging(level: Option<&str>, json: bool) {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init()
    };
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not for files, pipes and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The documented exit code for an error (see `EXIT_CODES` in cli.rs).
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return code_for(e.kind());
        }
        if let Some(e) = cause.downcast_ref::<securexfer::client::v4::error::V4Error>() {
            return code_for(e.kind());
        }
        if let Some(e) = cause.downcast_ref::<securexfer::client::v4::negotiate::Refusal>() {
            use securexfer::client::v4::negotiate::Refusal;
            return match e {
                Refusal::KnownServer { .. } | Refusal::PinDisagrees { .. } => 8,
                Refusal::PinWithProtocol3 => 2,
            };
        }
        if cause.is::<UsageError>() {
            return 2;
        }
        if cause.is::<fetch::NotServed>() {
            return 4;
        }
        if let Some(e) = cause.downcast_ref::<securexfer::store::migrate::MigrateError>() {
            return migrate::exit_code(e);
        }
        if let Some(e) = cause.downcast_ref::<serve::StartError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<securexfer::client::trust::TrustError>() {
            use securexfer::client::trust::TrustError;
            return match e {
                TrustError::KeyMismatch { .. } => 8,
                TrustError::Connect { .. } => 3,
                TrustError::NotProtocol4 { .. } => 4,
                TrustError::Io { .. } | TrustError::Corrupt { .. } => 6,
            };
        }
        if cause.is::<IdentityError>()
            || cause.is::<securexfer::client::v4::key::KeyFileError>()
            || cause.is::<DbError>()
            || cause.is::<LocalError>()
            || cause.is::<securexfer::server::identity::IdentityError>()
            || cause.is::<securexfer::store::PostgresError>()
            || cause.is::<securexfer::store::s3::S3OpenError>()
        {
            return 6;
        }
    }
    1
}

/// The exit code of a client failure.
pub fn code_for(kind: FailureKind) -> u8 {
    match kind {
        FailureKind::Connection => 3,
        FailureKind::Refused => 4,
        FailureKind::Verification => 5,
        FailureKind::Local => 6,
        FailureKind::ServerKey => 8,
    }
}
