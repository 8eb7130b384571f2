//! Shell completions and man pages, made from the clap definition in `cli.rs`.
//!
//! `build.rs` includes this file to write the committed copies in `completions/` and `man/`,
//! and the binary uses it for `securexfer completions` and `securexfer man`, so both make the
//! same bytes. Like `cli.rs` it may use only std, clap, clap_complete and clap_mangen.

use crate::cli::{Cli, CompletionShell};
use clap::{CommandFactory, ValueHint};
use clap_complete::{Generator, Shell};
use std::fs;
use std::io;
use std::path::Path;

/// The program's name, in completion functions and man page names.
pub const BIN: &str = "securexfer";

/// Every shell `securexfer completions` knows, in the order build.rs writes them.
#[allow(dead_code)] // used by build.rs
pub const SHELLS: [CompletionShell; 5] = [
    CompletionShell::Bash,
    CompletionShell::Zsh,
    CompletionShell::Fish,
    CompletionShell::Powershell,
    CompletionShell::Elvish,
];

fn clap_shell(shell: CompletionShell) -> Shell {
    match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
        CompletionShell::Powershell => Shell::PowerShell,
        CompletionShell::Elvish => Shell::Elvish,
    }
}

/// The name the shell's completion directory expects: `securexfer.bash`, `_securexfer`...
#[allow(dead_code)] // used by build.rs
pub fn completion_file_name(shell: CompletionShell) -> String {
    clap_shell(shell).file_name(BIN)
}

/// The completion script for one shell.
pub fn completion(shell: CompletionShell) -> Vec<u8> {
    // clap_complete changes the command it is given: each script gets a fresh one.
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(clap_shell(shell), &mut cmd, BIN, &mut script);
    if shell != CompletionShell::Bash {
        return script;
    }
    let script = String::from_utf8(script).expect("clap_complete writes UTF-8");
    bash_path_positionals(script, &cmd, BIN).into_bytes()
}

/// clap_complete's bash script offers only flags where a positional argument goes (`send
/// <Tab>` gives `-`), whatever the argument's value hint. For every command whose
/// positionals are paths, its case in the script is changed to offer flags only for a word
/// starting with `-` and file (or directory) names otherwise.
fn bash_path_positionals(mut script: String, cmd: &clap::Command, fn_name: &str) -> String {
    let hint = cmd
        .get_positionals()
        .map(|a| a.get_value_hint())
        .find(|h| matches!(h, ValueHint::FilePath | ValueHint::AnyPath | ValueHint::DirPath));
    if let Some(hint) = hint {
        let compgen = if hint == ValueHint::DirPath { "compgen -d" } else { "compgen -f" };
        script = patch_bash_case(&script, fn_name, compgen);
    }
    for sub in cmd.get_subcommands() {
        // The function names clap_complete gives nested commands.
        let name = format!("{fn_name}__subcmd__{}", sub.get_name().replace('-', "__subcmd__"));
        script = bash_path_positionals(script, sub, &name);
    }
    script
}

/// Rewrites the `fn_name)` case of a clap_complete bash script; panics (in build.rs and the
/// tests) if clap_complete's output no longer has the expected shape.
fn patch_bash_case(script: &str, fn_name: &str, compgen: &str) -> String {
    let head = format!("\n        {fn_name})\n");
    let start = script.find(&head).unwrap_or_else(|| panic!("no case {fn_name} in bash script"))
        + head.len();
    let end = start + script[start..].find("\n            ;;\n").expect("end of the case");
    let case = &script[start..end];
    // The first word after the command is completed as a flag: only when it starts with `-`.
    let only_flags = case.find(" || ${COMP_CWORD} -eq ").expect("first-word test in the case");
    let only_flags_end = only_flags + case[only_flags..].find(" ]]").expect("end of the test");
    let fallback = "COMPREPLY=( $(compgen -W \"${opts}\" -- \"${cur}\") )\n            return 0";
    let last = case.rfind(fallback).expect("fallback completion in the case");
    let files = format!(
        "local oldifs=\"$IFS\"
            IFS=$'\\n'
            COMPREPLY=( $({compgen} -- \"${{cur}}\") )
            IFS=\"$oldifs\"
            if [[ \"${{BASH_VERSINFO[0]}}\" -ge 4 ]]; then
                compopt -o filenames 2>/dev/null
            fi
            return 0"
    );
    let mut out = String::with_capacity(script.len() + files.len());
    out.push_str(&script[..start]);
    out.push_str(&case[..only_flags]);
    out.push_str(&case[only_flags_end..last]);
    out.push_str(&files);
    out.push_str(&case[last + fallback.len()..]);
    out.push_str(&script[end..]);
    out
}

/// Every man page as (file name, roff): `securexfer.1` and one per subcommand, named
/// `securexfer-serve.1`, `securexfer-db-inspect.1` and so on.
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    collect_man_pages(Cli::command(), BIN, &mut pages)?;
    Ok(pages)
}

fn collect_man_pages(
    cmd: clap::Command,
    name: &str,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> io::Result<()> {
    // clap wants 'static names; this runs once per process and leaks a few bytes.
    let static_name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let cmd = cmd.name(static_name).bin_name(name.replace('-', " "));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    pages.push((format!("{name}.1"), page));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        collect_man_pages(sub.clone(), &format!("{name}-{}", sub.get_name()), pages)?;
    }
    Ok(())
}

/// Writes every man page into `dir`, creating it if needed.
pub fn write_man_pages(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, page) in man_pages()? {
        fs::write(dir.join(name), page)?;
    }
    Ok(())
}
