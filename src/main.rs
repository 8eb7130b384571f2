//! The `securexfer` binary: parse the command line, set up logging, run one subcommand,
//! print the error chain once and exit with a documented code.
#![deny(unsafe_code)]

mod cli;
mod cmd;
mod generate;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
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

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
