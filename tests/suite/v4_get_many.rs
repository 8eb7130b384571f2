//! `get` of many files into a directory (`get -r`, `get NAME…`): downloads made durable a
//! batch at a time (src/cmd/fetch_many.rs), through the real binary, against the real
//! server and against a server that lies.

use crate::common::{self, Server};
use crate::v4_client::{Client, code, text};
use crate::v4_peer::{GetLie, Peer, Script};
use std::path::Path;

/// Every file under `dir` (partial ones too), as sorted relative paths.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &format!("{name}/"), found);
            } else {
                found.push(name);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, "", &mut found);
    found.sort();
    found
}

fn no_temporary_file(files: &[String]) {
    let temp: Vec<_> = files.iter().filter(|f| f.contains(".securexfer-")).collect();
    assert!(temp.is_empty(), "partial files left: {temp:?}");
}

#[test]
fn get_r_of_hundreds_of_files_is_byte_identical_and_an_existing_file_is_refused_alone() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let client = Client::new();
    let out = client.run(&["register", "--server", &addr, "--name", "many"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    // Small files of all sizes (none empty: the walk sends those too, but say so), in
    // folders, and one large enough to be streamed in several frames.
    let mut files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("d{:02}/f{i:03}", i / 50), common::random_bytes(1 + i * 17, i as u64)))
        .collect();
    files.push(("big.bin".into(), common::random_bytes(3 << 20, 301)));
    for (path, data) in &files {
        let at = client.path().join("many").join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, data).unwrap();
    }
    let out = client.run(&["send", "-r", "many", "--server", &addr, "--quiet"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));

    let down = client.path().join("down");
    std::fs::create_dir_all(down.join("many/d02")).unwrap();
    std::fs::write(down.join("many/d02/f123"), b"mine").unwrap();
    let into = down.to_str().unwrap();
    let out = client.run(&["get", "-r", "many", "-o", into, "--server", &addr, "--json"]);
    assert_ne!(code(&out), Some(0), "many/d02/f123 exists there");
    let failed: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["name"], "many/d02/f123");
    assert!(failed[0]["error"].as_str().unwrap().contains("--force"), "{failed:?}");
    assert_eq!(std::fs::read(down.join("many/d02/f123")).unwrap(), b"mine", "left alone");
    for (path, data) in files.iter().filter(|(p, _)| p != "d02/f123") {
        assert!(std::fs::read(down.join("many").join(path)).unwrap() == *data, "{path}");
    }
    let placed = files_under(&down);
    no_temporary_file(&placed);
    assert_eq!(placed.len(), files.len(), "nothing more");

    let out = client.run(&["get", "-r", "many", "-o", into, "--server", &addr, "--force", "-q"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(down.join("many/d02/f123")).unwrap(), files[123].1);
    no_temporary_file(&files_under(&down));

    // Several names without -r go into the directory as their last components.
    let flat = client.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    let names = ["many/d00/f007", "many/d05/f299", "many/big.bin"];
    let mut args = vec!["get", "-o", flat.to_str().unwrap(), "--server", &addr, "-q"];
    args.extend(names);
    let out = client.run(&args);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(files_under(&flat), ["big.bin", "f007", "f299"]);
    assert!(std::fs::read(flat.join("f299")).unwrap() == files[299].1);
}

#[test]
fn a_lying_server_cannot_get_an_unverified_file_placed_among_many() {
    let stored: Vec<(String, Vec<u8>)> = (0..40u64)
        .map(|i| (format!("t/f{i:02}"), common::random_bytes(1000 + i as usize, i)))
        .collect();
    // A wrong hash fails that file only; a wrong byte count breaks the connection, so the
    // files after it are not tried (and those before it are still placed).
    for (lie, exit, placed) in [
        (GetLie::WrongHash, 5, 39),
        (GetLie::WrongRecordedHash, 5, 39),
        (GetLie::ExtraBytes, 4, 17),
        (GetLie::FewerBytes, 4, 17),
    ] {
        let peer = Peer::start(Script {
            registered: true,
            stored: stored.clone(),
            get_lie: lie,
            lie_about: vec!["t/f17".into()],
            ..Script::default()
        });
        let client = Client::new();
        let out = client.run(&["get", "-r", "t", "--server", &peer.addr, "-q"]);
        assert_eq!(code(&out), Some(exit), "{lie:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("t/f17"), "{lie:?}: {}", text(&out.stderr));
        let t = client.path().join("t");
        let found = files_under(&t);
        no_temporary_file(&found);
        assert!(!found.contains(&"f17".to_owned()), "{lie:?}: the lie was placed");
        assert_eq!(found.len(), placed, "{lie:?}: {found:?}");
        for name in &found {
            let (_, data) = stored.iter().find(|(p, _)| *p == format!("t/{name}")).unwrap();
            assert!(std::fs::read(t.join(name)).unwrap() == *data, "{lie:?}: {name}");
        }
    }
}
