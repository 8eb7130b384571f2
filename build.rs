//! Generates shell completions and man pages from the same clap definition the binary uses
//! (`src/cli.rs`, which imports only std and clap), with the code the binary's `completions`
//! and `man` subcommands use (`src/generate.rs`).
//!
//! They are written to `OUT_DIR`; `tests/generated.rs` fails when the committed copies in
//! `completions/` and `man/` differ. `SECUREXFER_UPDATE_GENERATED=1 cargo build` refreshes the
//! committed copies.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;
#[path = "src/generate.rs"]
mod generate;

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed=src/generate.rs");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SECUREXFER_UPDATE_GENERATED");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let completions = out.join("completions");
    let man = out.join("man");
    fs::create_dir_all(&completions)?;
    fs::create_dir_all(&man)?;
    for shell in generate::SHELLS {
        fs::write(
            completions.join(generate::completion_file_name(shell)),
            generate::completion(shell),
        )?;
    }
    generate::write_man_pages(&man)?;
    if std::env::var_os("SECUREXFER_UPDATE_GENERATED").is_some() {
        let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        copy_dir(&completions, &root.join("completions"))?;
        copy_dir(&man, &root.join("man"))?;
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
