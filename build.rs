//! Generates shell completions and man pages from the same clap definition the binary uses
//! (`src/cli.rs`, which imports only std and clap).
//!
//! They are written to `OUT_DIR`; `tests/generated.rs` fails when the committed copies in
//! `completions/` and `man/` differ. `SECUREXFER_UPDATE_GENERATED=1 cargo build` refreshes the
//! committed copies.

use clap::CommandFactory;
use clap_complete::Shell;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SECUREXFER_UPDATE_GENERATED");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let completions = out.join("completions");
    let man = out.join("man");
    fs::create_dir_all(&completions)?;
    fs::create_dir_all(&man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::PowerShell, Shell::Elvish] {
        // clap_complete changes the command it is given: each shell gets a fresh one.
        let mut cmd = cli::Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "securexfer", &completions)?;
    }
    write_man_pages(cli::Cli::command(), "securexfer", &man)?;
    if std::env::var_os("SECUREXFER_UPDATE_GENERATED").is_some() {
        let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        copy_dir(&completions, &root.join("completions"))?;
        copy_dir(&man, &root.join("man"))?;
    }
    Ok(())
}

/// One page for the command and one for every subcommand, named `securexfer-serve.1` etc.
fn write_man_pages(cmd: clap::Command, name: &str, dir: &Path) -> io::Result<()> {
    // clap wants 'static names; a build script may leak a few bytes.
    let static_name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let cmd = cmd.name(static_name).bin_name(name.replace('-', " "));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    fs::write(dir.join(format!("{name}.1")), page)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_man_pages(sub.clone(), &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}
