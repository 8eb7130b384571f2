//! The `securexfer` binary: parse the command line, set up logging, run one subcommand,
//! print the error chain once and exit with a documented code.
#![deny(unsafe_code)]

mod cli;
mod cmd;
mod generate;

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

fn main() -> ExitCode {
    match parse().and_then(cmd::run) {
        Ok(code) => code,
        Err(error) => {
            // A closed stdout (`securexfer db inspect | head`) is not a failure.
            if is_broken_pipe(&error) {
                return ExitCode::SUCCESS;
            }
            eprintln!("securexfer: error: {error:#}");
            ExitCode::from(cmd::exit_code(&error))
        }
    }
}

/// The command line, with the configuration file's settings where flags and variables
/// left defaults (see `cmd::config`). `--version` names the commit built (from build.rs)
/// and the protocol spoken too; the man pages keep the plain version, so they do not
/// change with every commit.
fn parse() -> anyhow::Result<cli::Cli> {
    let version = format!(
        "{} (commit {}, protocol {})",
        env!("CARGO_PKG_VERSION"),
        env!("SECUREXFER_GIT_COMMIT"),
        securexfer::protocol::VERSION
    );
    // clap wants a 'static version; this runs once.
    let version: &'static str = Box::leak(version.into_boxed_str());
    let command = cli::Cli::command().version(version);
    let argv = cmd::config::with_file_settings(&command, std::env::args_os().collect())?;
    let matches = command.get_matches_from(argv);
    Ok(cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
