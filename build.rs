//! Generates shell completions and man pages from the same clap definition the binary uses
//! (`src/cli.rs`, which imports only std and clap), with the code the binary's `completions`
//! and `man` subcommands use (`src/generate.rs`).
//!
//! They are written to `OUT_DIR`; `tests/suite/generated.rs` fails when the committed copies in
//! `completions/` and `man/` differ. `SECUREXFER_UPDATE_GENERATED=1 cargo build` refreshes the
//! committed copies.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rustc-env=SECUREXFER_GIT_COMMIT={}", git_commit(&root));
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
        copy_dir(&completions, &root.join("completions"))?;
        copy_dir(&man, &root.join("man"))?;
    }
    Ok(())
}

/// The commit being built, for `--version`: `git rev-parse --short HEAD`, or "unknown"
/// outside a git checkout (a crate tarball, an archive of the sources).
fn git_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).current_dir(root).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Build again when HEAD moves: HEAD itself changes on a checkout, the branch it names on
    // a commit (a loose ref, or packed-refs once packed). In a worktree .git is a file, so
    // git says where these are. Only existing files: cargo reruns always for missing ones.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched.into_iter().flatten().map(|p| root.join(p)) {
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    commit
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
