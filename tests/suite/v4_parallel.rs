//! `send --parallel N` (issue 15): several connections to the server at once, each taking
//! the next file (or run of small files) when it is free; every file verified, each
//! stored byte-identical, and the whole run reported as one.

use crate::common::{self, Server};
use crate::server::{metrics_address, sample, scrape};
use crate::v4_client::{Client, code, text};

#[test]
fn send_parallel_spreads_a_tree_over_connections_and_stores_every_file_identical() {
    let server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_address(&server);
    let addr = server.addr.to_string();
    let client = Client::new();
    let out = client.run(&["register", "--server", &addr, "--name", "pat"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let before = sample(&scrape(&metrics), "securexfer_connections_accepted_total");
    let tree = client.path().join("tree");
    std::fs::create_dir_all(tree.join("small")).unwrap();
    let mut files = Vec::new();
    for i in 0..4 {
        files.push((format!("big{i}.bin"), common::random_bytes(3 << 20, 40 + i)));
    }
    for i in 0..60 {
        files.push((format!("small/{i:02}.txt"), format!("small file {i}").into_bytes()));
    }
    for (name, data) in &files {
        std::fs::write(tree.join(name), data).unwrap();
    }
    let out = client.run(&["send", "-r", "tree", "--parallel", "3", "--json", "--server", &addr]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary = lines.last().unwrap();
    assert_eq!(summary["verified"], files.len(), "{summary}");
    assert_eq!(lines.len(), files.len() + 1, "one line per file, then the summary");
    let after = sample(&scrape(&metrics), "securexfer_connections_accepted_total");
    assert_eq!(after - before, 3.0, "three connections sent the run");

    // Each stored file is the local one.
    let down = client.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let out = client.run(&["get", "-r", "tree", "-o", down.to_str().unwrap(), "--server", &addr]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    for (name, data) in &files {
        let back = std::fs::read(down.join("tree").join(name)).unwrap();
        assert!(&back == data, "{name} came back different");
    }

    // One file: one connection, however many were asked for.
    client.file("one.bin", &common::random_bytes(1 << 20, 50));
    let before = sample(&scrape(&metrics), "securexfer_connections_accepted_total");
    let out = client.run(&["send", "one.bin", "--parallel", "4", "--server", &addr]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let after = sample(&scrape(&metrics), "securexfer_connections_accepted_total");
    assert_eq!(after - before, 1.0);
}

#[test]
fn parallel_is_a_number_from_1_to_16() {
    let client = Client::new();
    for bad in ["0", "17", "many"] {
        let out = client.run(&["send", "x", "--parallel", bad, "--server", "127.0.0.1:1"]);
        assert_eq!(code(&out), Some(2), "--parallel {bad}: {}", text(&out.stderr));
    }
    client.file("x", b"x");
    let out =
        client.run(&["send", "x", "--parallel", "2", "--protocol", "3", "--server", "127.0.0.1:1"]);
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--parallel needs protocol 4"), "{}", text(&out.stderr));
}
