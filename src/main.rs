//! The `securexfer` binary: parse the command line, set up logging, run one subcommand,
//! print the error chain once and exit with a documented code.
#![deny(unsafe_code)]

mod cli;
mod cmd;
mod generate;

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = parse();
    match cmd::run(cli) {
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

/// Parses the command line. `--version` names the commit built (from build.rs) and the
/// protocol spoken too; the man pages keep the plain version, so they do not change with
/// every commit.
fn parse() -> cli::Cli {
    let version = format!(
        "{} (commit {}, protocol {})",
        env!("CARGO_PKG_VERSION"),
        env!("SECUREXFER_GIT_COMMIT"),
        securexfer::protocol::VERSION
    );
    // clap wants a 'static version; this runs once.
    let version: &'static str = Box::leak(version.into_boxed_str());
    let matches = cli::Cli::command().version(version).get_matches();
    cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
