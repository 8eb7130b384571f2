//! The committed completions and man pages must be what the current CLI generates.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

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
    ] {
        assert!(man.contains(f), "missing man/{f}");
    }
}
