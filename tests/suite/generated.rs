//! What is shipped beside the binary: the committed completions and man pages must be what
//! the current CLI generates, the `completions` and `man` subcommands must print the same, the
//! bash script must complete what a user types, and the systemd unit must pass systemd's own
//! checks.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_securexfer");

/// The clap definition itself, to know which command has which variable.
#[allow(dead_code)]
#[path = "../../src/cli.rs"]
mod cli;

/// Whether `tool` runs here. Absent, the test says SKIPPED, except in CI (`CI=true`), where
/// a missing tool fails it.
fn have_tool(tool: &str, version_flag: &str) -> bool {
    if Command::new(tool).arg(version_flag).output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "`{tool}` is required in CI");
    eprintln!("SKIPPED: `{tool}` is not installed");
    false
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn same_files(kind: &str) {
    let generated = Path::new(env!("OUT_DIR")).join(kind);
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
    let hint = "run `SECUREXFER_UPDATE_GENERATED=1 cargo build` and commit the result";
    assert_eq!(
        names(&generated),
        names(&committed),
        "{kind}/ has other files than the CLI makes; {hint}"
    );
    for name in names(&generated) {
        let want = fs::read(generated.join(&name)).unwrap();
        let have = fs::read(committed.join(&name)).unwrap();
        assert!(want == have, "{kind}/{name} is stale; {hint}");
    }
}

#[test]
fn committed_completions_match_the_cli() {
    same_files("completions");
}

#[test]
fn committed_man_pages_match_the_cli() {
    same_files("man");
}

#[test]
fn every_shell_and_subcommand_is_covered() {
    let completions = names(&Path::new(env!("CARGO_MANIFEST_DIR")).join("completions"));
    for f in
        ["securexfer.bash", "_securexfer", "securexfer.fish", "_securexfer.ps1", "securexfer.elv"]
    {
        assert!(completions.contains(f), "missing completions/{f}");
    }
    let man = names(&Path::new(env!("CARGO_MANIFEST_DIR")).join("man"));
    for f in [
        "securexfer.1",
        "securexfer-serve.1",
        "securexfer-register.1",
        "securexfer-send.1",
        "securexfer-db.1",
        "securexfer-db-inspect.1",
        "securexfer-completions.1",
        "securexfer-man.1",
    ] {
        assert!(man.contains(f), "missing man/{f}");
    }
}

#[test]
fn the_completions_subcommand_prints_the_committed_scripts() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
    for (shell, file) in [
        ("bash", "securexfer.bash"),
        ("zsh", "_securexfer"),
        ("fish", "securexfer.fish"),
        ("powershell", "_securexfer.ps1"),
        ("elvish", "securexfer.elv"),
    ] {
        let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(
            out.status.success(),
            "completions {shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = fs::read(committed.join(file)).unwrap();
        assert!(
            out.stdout == want,
            "`securexfer completions {shell}` differs from completions/{file}"
        );
    }
}

#[test]
fn the_man_subcommand_writes_the_committed_pages() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["man", "pages"]).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "man: {}", String::from_utf8_lossy(&out.stderr));
    let written = dir.path().join("pages");
    assert_eq!(names(&written), names(&committed), "`securexfer man DIR` wrote other pages");
    for name in names(&committed) {
        let same =
            fs::read(written.join(&name)).unwrap() == fs::read(committed.join(&name)).unwrap();
        assert!(same, "`securexfer man` wrote a {name} that differs from man/{name}");
    }
    // Without DIR, the pages go to the working directory.
    let out = Command::new(BIN).arg("man").current_dir(dir.path()).output().unwrap();
    assert!(out.status.success());
    assert!(dir.path().join("securexfer-send.1").is_file(), "man without DIR");
}

/// What the committed bash script offers for `words` (the last being completed) in `dir`,
/// called as bash-completion calls it: COMP_WORDS, COMP_CWORD, and the function's arguments
/// (command, current word, previous word); the answer is COMPREPLY.
fn bash_complete(dir: &Path, words: &[&str]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("completions/securexfer.bash");
    let program = r#"source "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
        _securexfer "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" 2>/dev/null
        printf '%s\n' "${COMPREPLY[@]}""#;
    let out = Command::new("bash")
        .args(["-c", program, "bash"])
        .arg(&script)
        .args(words)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_file_names_for_send_and_path_flags() {
    if !have_tool("bash", "--version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for f in ["report-2026.pdf", "photos.tar", "me.info"] {
        fs::write(dir.path().join(f), b"x").unwrap();
    }
    fs::create_dir(dir.path().join("pages")).unwrap();
    let d = dir.path();
    assert_eq!(bash_complete(d, &["securexfer", "send", "rep"]), ["report-2026.pdf"]);
    assert_eq!(bash_complete(d, &["securexfer", "send", "report-2026.pdf", "ph"]), ["photos.tar"]);
    assert_eq!(bash_complete(d, &["securexfer", "send", "--identity", "m"]), ["me.info"]);
    assert_eq!(bash_complete(d, &["securexfer", "send", "--js"]), ["--json"]);
    assert_eq!(bash_complete(d, &["securexfer", "serve", "--db", "m"]), ["me.info"]);
    // Directory flags leave the names to bash (`compopt -o plusdirs`), outside COMPREPLY.
    assert!(bash_complete(d, &["securexfer", "serve", "--storage", "m"]).is_empty());
    assert_eq!(bash_complete(d, &["securexfer", "man", "p"]), ["pages"]);
    assert_eq!(bash_complete(d, &["securexfer", "completions", "ba"]), ["bash"]);
}

#[test]
fn version_names_the_commit_built_and_the_protocol() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("securexfer {} (", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("protocol 3"), "{text}");
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned());
    let commit = head.unwrap_or_else(|| "unknown".to_owned());
    assert!(text.contains(&format!("commit {commit},")), "{text} (HEAD is {commit})");
    // A subcommand's --version says the same.
    let out = Command::new(BIN).args(["send", "--version"]).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains(&format!("commit {commit},")));
}

/// The body of section `name` of a roff page (up to the next `.SH`), if the page has it.
fn section<'a>(page: &'a str, name: &str) -> Option<&'a str> {
    let head =
        if name.contains(' ') { format!(".SH \"{name}\"\n") } else { format!(".SH {name}\n") };
    let start = page.find(&head)? + head.len();
    // An empty section is followed at once by the next heading.
    let rest = format!("\n{}", &page[start..]);
    let end = rest.find("\n.SH ").map_or(page.len(), |i| start + i);
    Some(&page[start..end])
}

fn man_page(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(format!("{name}.1"));
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_man_page_has_the_operator_sections_and_names_only_existing_pages() {
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    for file in names(&man) {
        let page = man_page(file.strip_suffix(".1").unwrap());
        for name in ["ENVIRONMENT", "FILES", "EXIT STATUS", "EXAMPLES", "SEE ALSO"] {
            assert!(
                section(&page, name).is_some_and(|s| !s.trim().is_empty()),
                "{file}: no {name}"
            );
        }
        let exit = section(&page, "EXIT STATUS").unwrap();
        for code in [0, 1, 2, 3, 4, 5, 6, 7, 8, 130] {
            assert!(exit.contains(&format!(".TP\n\\fB{code}\\fR\n")), "{file}: exit status {code}");
        }
        let see_also = section(&page, "SEE ALSO").unwrap();
        let entries: Vec<&str> = see_also.split(", ").map(str::trim).collect();
        for entry in entries {
            let name = entry
                .strip_prefix("\\fB")
                .and_then(|e| e.strip_suffix("\\fR(1)"))
                .unwrap_or_else(|| panic!("{file}: SEE ALSO entry {entry:?} is not NAME(1)"))
                .replace("\\-", "-");
            assert!(man.join(format!("{name}.1")).is_file(), "{file}: SEE ALSO names {name}(1)");
        }
    }
    let files = section(&man_page("securexfer"), "FILES").unwrap().replace("\\-", "-");
    for f in
        ["servers/HOST_PORT/me.info", "priv.key", "default-server", "./me.info", "transfer.info"]
    {
        assert!(files.contains(f), "securexfer.1 FILES lacks {f}");
    }
    for f in ["port.info", "(--db)", "(--storage)"] {
        assert!(files.contains(f), "securexfer.1 FILES lacks {f}");
    }
}

#[test]
fn every_securexfer_variable_is_in_the_environment_of_its_page() {
    use clap::CommandFactory;
    fn check(cmd: &clap::Command, page: &str, seen: &mut BTreeSet<String>) {
        let environment = section(&man_page(page), "ENVIRONMENT").unwrap_or_default().to_owned();
        for arg in cmd.get_arguments() {
            let Some(var) = arg.get_env() else { continue };
            let var = var.to_str().unwrap();
            let flag = format!("\\-\\-{}", arg.get_long().unwrap().replace('-', "\\-"));
            let entry = format!("\\fB{var}\\fR\nSets \\fB{flag}\\fR.");
            assert!(environment.contains(&entry), "{page}.1: ENVIRONMENT lacks {var} ({flag})");
            seen.insert(var.to_owned());
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            check(sub, &format!("{page}-{}", sub.get_name()), seen);
        }
    }
    let mut seen = BTreeSet::new();
    check(&cli::Cli::command(), "securexfer", &mut seen);
    // And every SECUREXFER_ name written in cli.rs is one of them.
    let source = include_str!("../../src/cli.rs");
    for (i, _) in source.match_indices("SECUREXFER_") {
        let name: String = source[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if name == "SECUREXFER_" {
            continue; // the prefix itself, in prose ("SECUREXFER_* variables")
        }
        assert!(seen.contains(&name), "{name} in src/cli.rs is on no man page's ENVIRONMENT");
    }
    assert!(seen.len() >= 18, "only {} variables found", seen.len());
}

/// The units of contrib/systemd with ExecStart pointing at the binary under test
/// (`systemd-analyze verify` checks that it exists), in a temporary directory with the man
/// pages their Documentation= names under man/man1 (verify runs `man` on them too).
fn unit_under_test() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for name in names(&root.join("contrib/systemd")) {
        let unit = fs::read_to_string(root.join("contrib/systemd").join(&name)).unwrap();
        if name.ends_with(".service") {
            assert!(
                unit.contains("ExecStart=/usr/local/bin/securexfer "),
                "{name}: ExecStart moved"
            );
        }
        let unit = unit.replace("ExecStart=/usr/local/bin/securexfer", &format!("ExecStart={BIN}"));
        fs::write(dir.path().join(&name), unit).unwrap();
    }
    let man1 = dir.path().join("man/man1");
    fs::create_dir_all(&man1).unwrap();
    for name in names(&root.join("man")) {
        fs::copy(root.join("man").join(&name), man1.join(&name)).unwrap();
    }
    dir
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    if !have_tool("systemd-analyze", "--version") {
        return;
    }
    let dir = unit_under_test();
    let units = ["securexfer.service", "securexfer-verify.service", "securexfer-verify.timer"];
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .env("MANPATH", dir.path().join("man"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An unknown or invalid setting is only a warning: any output is a failure.
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn the_systemd_unit_is_hardened() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = fs::read_to_string(root.join("contrib/systemd/securexfer.service")).unwrap();
    let lines: BTreeSet<&str> = unit.lines().map(str::trim).collect();
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=securexfer",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(lines.contains(setting), "the unit lacks {setting}");
    }
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    for arg in ["--port 1357", "--storage /var/lib/securexfer/", "--db /var/lib/securexfer/"] {
        assert!(exec.contains(arg), "ExecStart lacks {arg}");
    }
    let grace: u64 =
        exec.split_once("--grace ").unwrap().1.split(' ').next().unwrap().parse().unwrap();
    let stop: u64 =
        unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).unwrap().parse().unwrap();
    assert!(stop > grace, "TimeoutStopSec={stop} must exceed --grace {grace}");
    if !have_tool("systemd-analyze", "--version") {
        return;
    }
    // systemd's own exposure score (0 to 10, shown as 1.6 when written): 2.0 at most.
    let dir = unit_under_test();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "securexfer.service"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 2.0:\n{report}");
}

/// The operator's guide, for the checks below.
fn operations_guide() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md")).unwrap()
}

/// GitHub's anchor for a heading: lower case, spaces as dashes, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every markdown document of the repository that people read: README, docs/, and the
/// READMEs of bench/, fuzz/ and the test data.
fn documents() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found: Vec<_> =
        ["README.md", "bench/README.md", "fuzz/README.md"].iter().map(|p| root.join(p)).collect();
    for dir in ["docs", "tests/data", "tests/data/vectors", "contrib"] {
        for entry in fs::read_dir(root.join(dir)).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "md") {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn the_documents_link_only_to_files_and_sections_in_the_repository() {
    let documents = documents();
    assert!(documents.len() >= 8, "only {} documents found", documents.len());
    let mut links = 0;
    for doc in &documents {
        let text = fs::read_to_string(doc).unwrap();
        let here = doc.parent().unwrap();
        for (i, _) in text.match_indices("](") {
            let target = text[i + 2..].split(')').next().unwrap();
            links += 1;
            let name = doc.display();
            assert!(!target.contains("://"), "{name}: a link outside the repository: {target}");
            let (file, section) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() { doc.clone() } else { here.join(file) };
            assert!(path.exists(), "{name}: {target}: no such file");
            if section.is_empty() || path.is_dir() {
                continue;
            }
            let linked = fs::read_to_string(&path).unwrap();
            let found = linked
                .lines()
                .filter_map(|l| l.strip_prefix('#'))
                .any(|h| anchor(h.trim_start_matches('#')) == section);
            assert!(found, "{name}: {target}: no such section in {}", path.display());
        }
    }
    assert!(links >= 20, "only {links} links found");
}

#[test]
fn every_securexfer_command_in_the_operations_guide_parses() {
    let guide = operations_guide();
    let mut checked = 0;
    for block in guide.split("```sh").skip(1) {
        let block = block.split("```").next().unwrap();
        for line in block.lines() {
            let line = line.split(" # ").next().unwrap().trim();
            let line = line.strip_prefix("sudo ").unwrap_or(line);
            let line = line.strip_prefix("docker exec securexfer ").unwrap_or(line);
            let Some(args) = line.strip_prefix("securexfer ") else { continue };
            let mut argv: Vec<&str> = args.split_whitespace().collect();
            argv.push("--help");
            let out =
                Command::new(BIN).args(&argv).env_remove("SECUREXFER_CONFIG").output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "securexfer {args}: {stderr}");
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} commands found");
}
