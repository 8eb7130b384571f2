//! Shell completions and man pages, made from the clap definition in `cli.rs`.
//!
//! `build.rs` includes this file to write the committed copies in `completions/` and `man/`,
//! and the binary uses it for `securexfer completions` and `securexfer man`, so both make the
//! same bytes. Like `cli.rs` it may use only std, clap, clap_complete and clap_mangen.

use crate::cli::{Cli, CompletionShell, EXIT_CODES};
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
/// `securexfer-serve.1`, `securexfer-db-inspect.1` and so on. clap_mangen renders the name,
/// synopsis, description and options; ENVIRONMENT, FILES, EXIT STATUS, EXAMPLES and SEE ALSO
/// are appended here.
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut commands = Vec::new();
    collect_commands(Cli::command(), BIN, &mut commands);
    let names: Vec<&str> = commands.iter().map(|(name, _)| name.as_str()).collect();
    let mut pages = Vec::new();
    for (name, cmd) in &commands {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        page.extend_from_slice(extra_sections(name, cmd, &names).as_bytes());
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

/// The command and every subcommand (but `help`), each under its page's name.
fn collect_commands(cmd: clap::Command, name: &str, out: &mut Vec<(String, clap::Command)>) {
    // clap wants 'static names; this runs once per process and leaks a few bytes.
    let static_name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let cmd = cmd.name(static_name).bin_name(name.replace('-', " "));
    out.push((name.to_owned(), cmd.clone()));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        collect_commands(sub.clone(), &format!("{name}-{}", sub.get_name()), out);
    }
}

/// Text for roff: backslashes and hyphens escaped, no line starting with a control character.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-").replace('\'', "\\*(Aq");
    if text.starts_with('.') { format!("\\&{text}") } else { text }
}

fn bold(text: &str) -> String {
    format!("\\fB{}\\fR", roff(text))
}

/// A `.TP` list: each (tag, text) pair as an indented paragraph.
fn tagged(items: impl IntoIterator<Item = (String, String)>) -> String {
    items.into_iter().map(|(tag, text)| format!(".TP\n{tag}\n{text}\n")).collect()
}

fn extra_sections(name: &str, cmd: &clap::Command, pages: &[&str]) -> String {
    let mut out = String::new();
    out.push_str(".SH ENVIRONMENT\n");
    out.push_str(&environment(name, cmd));
    out.push_str(".SH FILES\n");
    out.push_str(&tagged(files(name).iter().map(|(f, text)| (bold(f), roff(text)))));
    out.push_str(".SH \"EXIT STATUS\"\n");
    out.push_str(&tagged(
        exit_statuses().into_iter().map(|(code, text)| (bold(&code), roff(&text))),
    ));
    out.push_str(".SH EXAMPLES\n");
    for (text, command) in examples(name) {
        out.push_str(&format!(".PP\n{}\n.PP\n.RS 4\n{}\n.RE\n", roff(text), bold(command)));
    }
    out.push_str(".SH \"SEE ALSO\"\n");
    let see: Vec<String> =
        see_also(name, pages).iter().map(|p| format!("{}(1)", bold(p))).collect();
    out.push_str(&format!("{}\n", see.join(", ")));
    out
}

/// Every variable that sets one of the command's flags, and those read besides.
fn environment(name: &str, cmd: &clap::Command) -> String {
    let mut vars: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|arg| {
            let var = arg.get_env()?.to_str()?;
            let flag = arg
                .get_long()
                .map(|l| format!("--{l}"))
                .unwrap_or_else(|| arg.get_id().to_string());
            Some((bold(var), format!("Sets {}.", bold(&flag))))
        })
        .collect();
    let client = matches!(
        name,
        "securexfer-register"
            | "securexfer-send"
            | "securexfer-ls"
            | "securexfer-get"
            | "securexfer-rm"
    );
    if client {
        vars.push((
            bold("XDG_CONFIG_HOME"),
            roff("Where identities are kept (default: ~/.config)."),
        ));
        vars.push((bold("HOME"), roff("Gives ~/.config when XDG_CONFIG_HOME is not set.")));
    }
    if name == "securexfer" {
        vars.push((bold("SECUREXFER_*"), roff("Every flag of serve, register, send and db inspect has a variable, listed on that command's page.")));
    }
    if !matches!(name, "securexfer-completions" | "securexfer-man") {
        let verbose = if client { " (-v and -vv win over it)" } else { "" };
        vars.push((
            bold("RUST_LOG"),
            roff(&format!("What is logged on stderr, as a tracing filter such as debug{verbose}.")),
        ));
    }
    if vars.is_empty() {
        return roff("No variable changes what this command does.\n");
    }
    tagged(vars)
}

const IDENTITY: (&str, &str) = (
    "$XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/me.info",
    "The identity registered with the server HOST:PORT: name, client id and private key (mode 0600). $XDG_CONFIG_HOME defaults to ~/.config.",
);
const PRIV_KEY: (&str, &str) = (
    "$XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/priv.key",
    "The private key of that identity, base64 (mode 0600). --force keeps the old files as me.info.bak and priv.key.bak.",
);
const DEFAULT_SERVER: (&str, &str) = (
    "$XDG_CONFIG_HOME/securexfer/default-server",
    "The server of the latest registration, used without --server and transfer.info.",
);
const LOCAL_IDENTITY: (&str, &str) = (
    "./me.info, ./priv.key",
    "The existing client's identity in the working directory; used before the one above when present.",
);
const TRANSFER_INFO: (&str, &str) = (
    "./transfer.info",
    "The existing client's settings: line 1 HOST:PORT, line 2 the client name, line 3 on the files to send. Flags override it.",
);
const PORT_INFO: (&str, &str) = (
    "./port.info",
    "The port to listen on (one number) when --port is not given; without it, 1357.",
);
const DATABASE: (&str, &str) = (
    "defensive.db (--db)",
    "The server's SQLite database of clients and files (WAL mode: defensive.db-wal and defensive.db-shm beside it).",
);
const STORAGE: (&str, &str) = (
    "storage/ (--storage)",
    "Received files, as storage/CLIENT_ID_HEX/NAME; uploads in progress are temporary files there until confirmed.",
);

const KNOWN_SERVERS: (&str, &str) = (
    "~/.config/securexfer/known_servers ($XDG_CONFIG_HOME/securexfer/known_servers)",
    "The servers known to speak protocol 4 and the key trusted for each (HOST:PORT SHA256:... FIRST-SEEN), written on first contact by trust, register and send; and servers found to speak only protocol 3 in the last 24 hours (HOST:PORT protocol-3 WHEN), which grant nothing.",
);

const SERVER_KEY: (&str, &str) = (
    "DB.key (beside --db)",
    "The server's Ed25519 key for protocol 4 (PEM, mode 0600), made at the first start of serve and never rewritten; db fingerprint prints its fingerprint.",
);

const CLIENT_KEY: (&str, &str) = (
    "~/.config/securexfer/servers/HOST_PORT/client.key",
    "The client's Ed25519 key for that server over protocol 4 (PEM, mode 0600), made at the first protocol-4 contact and never rewritten: the server knows the client by it.",
);

fn files(name: &str) -> &'static [(&'static str, &'static str)] {
    const CLIENT: &[(&str, &str)] = &[
        IDENTITY,
        PRIV_KEY,
        CLIENT_KEY,
        KNOWN_SERVERS,
        DEFAULT_SERVER,
        LOCAL_IDENTITY,
        TRANSFER_INFO,
    ];
    const ALL: &[(&str, &str)] = &[
        IDENTITY,
        PRIV_KEY,
        CLIENT_KEY,
        DEFAULT_SERVER,
        LOCAL_IDENTITY,
        TRANSFER_INFO,
        PORT_INFO,
        KNOWN_SERVERS,
        DATABASE,
        SERVER_KEY,
        STORAGE,
    ];
    const GET: &[(&str, &str)] = &[
        IDENTITY,
        PRIV_KEY,
        CLIENT_KEY,
        KNOWN_SERVERS,
        DEFAULT_SERVER,
        LOCAL_IDENTITY,
        TRANSFER_INFO,
        (
            "DIR/.NAME.securexfer-partial",
            "A download under way, or cut off, beside its target; the next get of NAME into DIR continues it (the stored copy's generation is in its extended attribute user.securexfer.generation).",
        ),
    ];
    match name {
        "securexfer" => ALL,
        "securexfer-serve" => &[PORT_INFO, DATABASE, SERVER_KEY, STORAGE],
        "securexfer-get" => GET,
        "securexfer-register" | "securexfer-send" | "securexfer-ls" | "securexfer-rm" => CLIENT,
        "securexfer-db" | "securexfer-db-inspect" => &[DATABASE, SERVER_KEY, STORAGE],
        "securexfer-db-verify" | "securexfer-db-restore" => &[DATABASE, STORAGE],
        "securexfer-db-migrate" => &[DATABASE, SERVER_KEY, STORAGE],
        "securexfer-db-fingerprint" => &[DATABASE, SERVER_KEY],
        "securexfer-db-invite" | "securexfer-db-quota" => &[DATABASE],
        "securexfer-trust" => &[KNOWN_SERVERS, DEFAULT_SERVER],
        "securexfer-completions" => &[
            (
                "/usr/share/bash-completion/completions/securexfer",
                "Where bash-completion looks for the bash script.",
            ),
            ("~/.config/fish/completions/securexfer.fish", "Where fish looks for the fish script."),
        ],
        "securexfer-man" => &[("DIR/securexfer*.1", "The pages written, one per command.")],
        _ => &[],
    }
}

/// The exit codes in `EXIT_CODES`, as (code, meaning).
fn exit_statuses() -> Vec<(String, String)> {
    let mut codes: Vec<(String, String)> = Vec::new();
    for line in EXIT_CODES.lines().skip(1) {
        let line = line.trim();
        match line.split_once("  ") {
            Some((code, text)) if code.parse::<u8>().is_ok() => {
                codes.push((code.to_owned(), text.trim().to_owned()))
            }
            _ => {
                let (_, text) = codes.last_mut().expect("EXIT_CODES starts with a code");
                text.push(' ');
                text.push_str(line);
            }
        }
    }
    codes
}

fn examples(name: &str) -> &'static [(&'static str, &'static str)] {
    const SERVE: (&str, &str) = (
        "Accept remote clients on port 1357, keeping files and the database under /var/lib/securexfer:",
        "securexfer serve --listen 0.0.0.0 --port 1357 --storage /var/lib/securexfer/storage --db /var/lib/securexfer/securexfer.db",
    );
    const REGISTER: (&str, &str) = (
        "Register the name alice with a server, which becomes the default:",
        "securexfer register --server files.example.org:1357 --name alice",
    );
    const SEND: (&str, &str) = (
        "Send two files to the default server and verify them:",
        "securexfer send report.pdf photos.tar",
    );
    const INSPECT: (&str, &str) = (
        "Show what alice has stored, read-only, while the server runs:",
        "securexfer db inspect --db /var/lib/securexfer/securexfer.db --storage /var/lib/securexfer/storage --client alice",
    );
    match name {
        "securexfer" => &[SERVE, REGISTER, SEND, INSPECT],
        "securexfer-serve" => &[
            SERVE,
            (
                "Serve the existing Python server's folder as it does (port.info, storage, defensive.db):",
                "securexfer serve --listen 0.0.0.0",
            ),
        ],
        "securexfer-register" => &[
            REGISTER,
            (
                "Register again, keeping the old identity as me.info.bak:",
                "securexfer register --server files.example.org:1357 --name alice --force",
            ),
            (
                "Register with a server that takes invitations only, over protocol 4:",
                "securexfer register --server files.example.org:1357 --name alice --token sxi-aaaqeayeaudaocajbifqydiob4",
            ),
        ],
        "securexfer-send" => &[
            SEND,
            (
                "Send one file under another name and print the outcome as JSON:",
                "securexfer send --as notes.txt draft.txt --json",
            ),
            (
                "In a folder with the existing client's transfer.info, do what that client does:",
                "securexfer send",
            ),
            (
                "Run a send that was cut off again: each large file continues where the server's copy ends:",
                "securexfer send backup.tar",
            ),
            (
                "Refuse anything but protocol 4, with the server key the operator gave:",
                "securexfer send --protocol 4 --server-fingerprint SHA256:jbA361SaIFtqa3vgN9f6RiNjmkaoPE7F7L38pwtBX6I report.pdf",
            ),
        ],
        "securexfer-ls" => &[
            ("List every file this client has on the default server:", "securexfer ls"),
            (
                "Only the PDFs, sizes in bytes (quote the pattern for the shell):",
                "securexfer ls '*.pdf' --bytes",
            ),
            ("One JSON object per file, for a script:", "securexfer ls --json"),
        ],
        "securexfer-get" => &[
            (
                "Download two files into the working directory, each verified before it takes its name:",
                "securexfer get report.pdf photos.tar",
            ),
            (
                "Into another directory, replacing what is there:",
                "securexfer get report.pdf -o ~/Downloads --force",
            ),
            ("To stdout, for a pipe:", "securexfer get notes.txt -o - | less"),
            (
                "Run a download that was cut off again: it continues from its partial file:",
                "securexfer get backup.tar -o ~/Downloads",
            ),
        ],
        "securexfer-rm" => &[
            (
                "Remove a file (the server keeps it as a version under --keep-versions):",
                "securexfer rm draft.txt",
            ),
            ("Remove several and print the outcome as JSON:", "securexfer rm a.txt b.txt --json"),
        ],
        "securexfer-db" | "securexfer-db-inspect" => {
            &[INSPECT, ("Everything, as JSON:", "securexfer db inspect --json")]
        }
        "securexfer-db-verify" => &[
            (
                "Check every stored file and kept version against the records (exit 5 if any differ):",
                "securexfer db verify --db /var/lib/securexfer/securexfer.db --storage /var/lib/securexfer/storage",
            ),
            ("The same, as JSON for a monitoring job:", "securexfer db verify --json"),
        ],
        "securexfer-db-restore" => &[(
            "With the server stopped, put alice's previous report.pdf back:",
            "securexfer db restore --db /var/lib/securexfer/securexfer.db --storage /var/lib/securexfer/storage --client alice --file report.pdf",
        )],
        "securexfer-db-fingerprint" => &[(
            "Print the server key's fingerprint, for clients to pin:",
            "securexfer db fingerprint --db /var/lib/securexfer/securexfer.db",
        )],
        "securexfer-db-invite" => &[(
            "Invite alice, who must register within two days and under that name:",
            "securexfer db invite --db /var/lib/securexfer/securexfer.db --name alice --expires 2d",
        )],
        "securexfer-db-migrate" => &[(
            "Move a running server to PostgreSQL and an object store (run again until little moves, then once more with the server stopped):",
            "securexfer db migrate --from sqlite:/var/lib/securexfer/securexfer.db,storage:/var/lib/securexfer/storage --to postgres://securexfer:PASSWORD@db.internal/securexfer,s3://securexfer-files/prod",
        )],
        "securexfer-db-quota" => &[
            (
                "Let alice store 10 GiB in at most 50,000 files:",
                "securexfer db quota --db /var/lib/securexfer/securexfer.db --client alice --bytes 10G --files 50000",
            ),
            (
                "Show her usage, then lift the file limit:",
                "securexfer db quota --db /var/lib/securexfer/securexfer.db --client alice --files none",
            ),
        ],
        "securexfer-trust" => &[
            (
                "Trust a server's key on first use (compare the fingerprint shown with securexfer db fingerprint on the server):",
                "securexfer trust --server files.example.org:1357",
            ),
            (
                "Pin the key the operator gave before the first contact:",
                "securexfer trust --server files.example.org:1357 --fingerprint SHA256:jbA361SaIFtqa3vgN9f6RiNjmkaoPE7F7L38pwtBX6I",
            ),
        ],
        "securexfer-completions" => &[
            (
                "Install the bash completions:",
                "securexfer completions bash > /usr/share/bash-completion/completions/securexfer",
            ),
            ("Load them into the running zsh:", "source <(securexfer completions zsh)"),
        ],
        "securexfer-man" => {
            &[("Install the man pages:", "securexfer man /usr/local/share/man/man1")]
        }
        _ => &[],
    }
}

/// The top page, the parent, the subcommands, and the commands that work with this one; only
/// pages that exist.
fn see_also<'a>(name: &str, pages: &[&'a str]) -> Vec<&'a str> {
    let related: &[&str] = match name {
        "securexfer-serve" => &["securexfer-db-inspect"],
        "securexfer-register" => &["securexfer-send"],
        "securexfer-send" => &["securexfer-register", "securexfer-ls", "securexfer-get"],
        "securexfer-ls" => &["securexfer-get", "securexfer-rm", "securexfer-send"],
        "securexfer-get" => &["securexfer-ls", "securexfer-send"],
        "securexfer-rm" => &["securexfer-ls", "securexfer-db-restore"],
        "securexfer-db-inspect" => &["securexfer-serve"],
        _ => &[],
    };
    let parent = name.rsplit_once('-').map(|(parent, _)| parent);
    pages
        .iter()
        .copied()
        .filter(|&page| page != name)
        .filter(|&page| {
            page == BIN
                || Some(page) == parent
                || page.rsplit_once('-').map(|(p, _)| p) == Some(name)
                || related.contains(&page)
        })
        .collect()
}

/// Writes every man page into `dir`, creating it if needed.
pub fn write_man_pages(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, page) in man_pages()? {
        fs::write(dir.join(name), page)?;
    }
    Ok(())
}
