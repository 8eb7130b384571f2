//! Attack driver for a running `securexfer serve` (a benchmark tool, not part of the CLI).
//!
//! It mounts one attack shape from other loopback addresses, and while the attack runs a
//! normal client at 127.0.0.1 makes `--tries` whole transfers (register, send, confirm)
//! spread over `--duration` seconds, each timed. It prints the normal client's latency
//! (p50, p95, max), how many transfers succeeded and how many finished within 1 s and 2 s,
//! and what the attacker achieved. bench/attack.sh runs every shape against a fresh server
//! and reads the server's peak RSS; see bench/README.md.
//!
//! Shapes (the attacks of issue 11, each at the size the issue names):
//!
//! - `none`: no attack (the baseline).
//! - `forgery`: 4 threads at 127.0.0.10-13 know a victim's name and id and loop
//!   "1027, 1028 of random ciphertext, 1029", reconnecting whenever they are cut off.
//!   Any 2103 they get is confirmed; `--db` then counts the victim's forged files.
//! - `parked`: 1100 clients (registered from 60 addresses) each announce a ~4 GiB upload
//!   and send 32 bytes of it, then stay silent.
//! - `trickle`: 2100 connections trickling one byte per second and 3000 silent ones,
//!   from 100 addresses.
//! - `registrations`: 4 threads at 127.0.0.20-23 send 1025s as fast as they are answered.
//! - `unconfirmed`: one registered client sends valid 64 KiB uploads over 8 connections
//!   and never confirms them.
//!
//! ```sh
//! cargo run --release --example attack -- --server 127.0.0.1:PORT --shape forgery --db SERVER/defensive.db
//! ```

use clap::{Parser, ValueEnum};
use securexfer::client::Client;
use securexfer::client::identity::Identity;
use securexfer::client::wire::Timeouts;
use securexfer::crypto::aes::encrypt_to_vec;
use securexfer::crypto::{AesKey, PrivateKey};
use securexfer::protocol::Version;
use securexfer::protocol::{
    ClientId, FileHeader, FixedName, RESPONSE_HEADER_LEN, Request, Response, ResponseHeader,
    decode_response_payload, encode_request,
};
use securexfer::store::Db;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    None,
    Forgery,
    Parked,
    Trickle,
    Registrations,
    Unconfirmed,
}

#[derive(Debug, Parser)]
#[command(about = "One attack against a running securexfer server, and a normal client beside it")]
struct Args {
    /// The server, 127.0.0.1:PORT (attackers connect from other 127.0.0.0/8 addresses).
    #[arg(long)]
    server: SocketAddr,
    /// The attack.
    #[arg(long, value_enum)]
    shape: Shape,
    /// Seconds over which the normal client's transfers are spread.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// The normal client's transfers.
    #[arg(long, default_value_t = 20)]
    tries: usize,
    /// Bytes in each of the normal client's files.
    #[arg(long, default_value_t = 65_536)]
    size: usize,
    /// The server's database, to count what the attack stored.
    #[arg(long)]
    db: Option<PathBuf>,
}

/// What the attack threads count while they run.
#[derive(Default)]
struct Tally {
    /// Requests the attacker got a useful answer to (key exchanges, registrations...).
    granted: AtomicU64,
    /// Requests refused (2107) or cut off.
    refused: AtomicU64,
    /// Connections the attacker holds or has made.
    connections: AtomicU64,
}

impl Tally {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

const WAIT: Duration = Duration::from_secs(10);
const VICTIM_FILE: &str = "precious.bin";
const FORGED_FILE: &str = "forged.bin";

fn main() -> ExitCode {
    let args = Args::parse();
    securexfer::sys::raise_open_file_limit();
    let timeouts = Timeouts { connect: WAIT, io: WAIT };
    let tag = format!("a{}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());

    // The victim exists in every shape, so that each run does the same normal work.
    let victim = {
        let mut client = Client::new(&args.server.to_string(), timeouts);
        let file = temp_file(&random_bytes(4096));
        let session = client.register(&format!("{tag}-victim")).expect("registering the victim");
        client.send_file(&session, file.path(), VICTIM_FILE).expect("the victim's first file");
        session.identity
    };

    let mut attackers = Vec::new();
    let setup = Instant::now();
    match args.shape {
        Shape::None => {}
        Shape::Forgery => {
            for t in 0..4 {
                let (victim, tally, stop) = (victim.clone(), tally.clone(), stop.clone());
                let from = format!("127.0.0.{}", 10 + t);
                attackers
                    .push(thread::spawn(move || forge(args.server, &from, &victim, &tally, &stop)));
            }
        }
        Shape::Parked => {
            let streams = park(args.server, &tag, 1100, &tally);
            let stop = stop.clone();
            attackers.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                }
                drop(streams);
            }));
        }
        Shape::Trickle => {
            let (tally, stop) = (tally.clone(), stop.clone());
            attackers.push(thread::spawn(move || trickle(args.server, 2100, 3000, &tally, &stop)));
        }
        Shape::Registrations => {
            for t in 0..4 {
                let (tally, stop, tag) = (tally.clone(), stop.clone(), tag.clone());
                let from = format!("127.0.0.{}", 20 + t);
                attackers.push(thread::spawn(move || {
                    register_flood(args.server, &from, &tag, t, &tally, &stop)
                }));
            }
        }
        Shape::Unconfirmed => {
            let (tally, stop, tag) = (tally.clone(), stop.clone(), tag.clone());
            attackers.push(thread::spawn(move || never_confirm(args.server, &tag, &tally, &stop)));
        }
    }
    if args.shape == Shape::Trickle {
        // The connections are made before the normal client starts.
        while Tally::get(&tally.connections) < 5100 && setup.elapsed() < Duration::from_secs(60) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    println!(
        "attack {:?} in place after {:.1} s: {} connections made",
        args.shape,
        setup.elapsed().as_secs_f64(),
        Tally::get(&tally.connections)
    );

    // The normal client: fresh registrations, evenly spread.
    let data = random_bytes(args.size);
    let file = temp_file(&data);
    let gap = Duration::from_secs(args.duration) / args.tries.max(1) as u32;
    let start = Instant::now();
    let mut took = Vec::new();
    let mut failed = 0;
    let mut victim_took = Vec::new();
    let mut victim_failed = 0;
    for i in 0..args.tries {
        let due = start + gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let began = Instant::now();
        let mut client = Client::new(&args.server.to_string(), timeouts);
        let result = client
            .register(&format!("{tag}-normal-{i}"))
            .and_then(|session| client.send_file(&session, file.path(), "normal.bin"));
        took.push(began.elapsed());
        if let Err(e) = result {
            failed += 1;
            println!(
                "normal transfer {i} failed after {:.2} s: {e}",
                began.elapsed().as_secs_f64()
            );
        }
        // The client under attack goes on sending from its usual address.
        let began = Instant::now();
        let mut client = Client::new(&args.server.to_string(), timeouts);
        let result = client.reconnect(&victim).and_then(|session| match session {
            Some(session) => client.send_file(&session, file.path(), &format!("victim-{i}.bin")),
            None => Err(securexfer::client::ClientError::NameTaken("reconnect denied".into())),
        });
        victim_took.push(began.elapsed());
        if let Err(e) = result {
            victim_failed += 1;
            println!(
                "victim transfer {i} failed after {:.2} s: {e}",
                began.elapsed().as_secs_f64()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for handle in attackers {
        handle.join().expect("an attack thread");
    }

    let summary = |who: &str, took: &mut Vec<Duration>, failed: usize| {
        took.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pct = |p: f64| ms(took[((took.len() - 1) as f64 * p).round() as usize]);
        let within = |limit: Duration| took.iter().filter(|t| **t < limit).count();
        println!(
            "{who}: ok {}/{} p50_ms {:.1} p95_ms {:.1} max_ms {:.1} within_1s {} within_2s {}",
            took.len() - failed,
            took.len(),
            pct(0.5),
            pct(0.95),
            pct(1.0),
            within(Duration::from_secs(1)),
            within(Duration::from_secs(2)),
        );
    };
    summary("normal", &mut took, failed);
    summary("victim", &mut victim_took, victim_failed);
    println!(
        "attacker: granted {} refused {} connections {} in {:.1} s",
        Tally::get(&tally.granted),
        Tally::get(&tally.refused),
        Tally::get(&tally.connections),
        start.elapsed().as_secs_f64()
    );
    let mut bad = failed + victim_failed;
    if let Some(db) = &args.db {
        let db = Db::open_read_only(db).expect("cannot open the server's database");
        let files = db.files().expect("cannot read the files table");
        let victims: Vec<_> = files.iter().filter(|f| f.client_id == victim.id).collect();
        let forged = victims.iter().filter(|f| f.file_name == FORGED_FILE && f.verified).count();
        let own = victims.iter().filter(|f| f.file_name != FORGED_FILE && f.verified).count();
        let clients = db.clients().expect("cannot read the clients table").len();
        println!("records: forged {forged} victim_files_verified {own} clients {clients}");
        if forged > 0 || own != 1 + args.tries - victim_failed {
            bad += 1;
        }
    }
    if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `forgery`: 1027 as the victim, random content, 1029 on any 2103; again when cut off.
fn forge(server: SocketAddr, from: &str, victim: &Identity, tally: &Tally, stop: &AtomicBool) {
    let name = FixedName::new(&victim.name, "name").expect("a valid name");
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = connect_from(server, from) else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        Tally::add(&tally.connections);
        let reconnect =
            encode_request(Version::V3, victim.id, &Request::Reconnect { name: name.clone() });
        match exchange(&mut stream, &reconnect) {
            Ok(Some(Response::ReconnectAccepted { .. })) => Tally::add(&tally.granted),
            _ => {
                Tally::add(&tally.refused);
                continue;
            }
        }
        let content = random_bytes(16);
        let header = FileHeader {
            content_size: 16,
            file_name: FixedName::new(FORGED_FILE, "file name").expect("a valid name"),
        };
        let mut bytes = encode_request(Version::V3, victim.id, &Request::SendFile(header));
        bytes.extend_from_slice(&content);
        if let Ok(Some(Response::FileReceived { .. })) = exchange(&mut stream, &bytes) {
            let confirm = Request::CrcOk {
                file_name: FixedName::new(FORGED_FILE, "file name").expect("a valid name"),
            };
            let _ = exchange(&mut stream, &encode_request(Version::V3, victim.id, &confirm));
        }
    }
}

/// `parked`: `n` fresh clients, each with one ~4 GiB upload of which 32 bytes arrived.
fn park(server: SocketAddr, tag: &str, n: usize, tally: &Tally) -> Vec<TcpStream> {
    // One key for all: the server does not care, and key generation is not the attack.
    let key = PrivateKey::generate();
    let public = key.public_key().to_field().expect("a 1024-bit key");
    // About 4 GiB: the largest whose 1028 payload size (259 + content) fits in 32 bits.
    let content_size = 0xFFFF_FEF0u32;
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let from = format!("127.0.1.{}", 1 + i % 60);
        let Ok(mut stream) = connect_from(server, &from) else {
            Tally::add(&tally.refused);
            continue;
        };
        Tally::add(&tally.connections);
        let Some(id) = register_raw(&mut stream, &format!("{tag}-parked-{i}")) else {
            Tally::add(&tally.refused);
            continue;
        };
        let name = FixedName::new(&format!("{tag}-parked-{i}"), "name").expect("a valid name");
        let key_request = Request::SendPublicKey { name, public_key: public.clone() };
        if !matches!(
            exchange(&mut stream, &encode_request(Version::V3, id, &key_request)),
            Ok(Some(Response::PublicKeyAccepted { .. }))
        ) {
            Tally::add(&tally.refused);
            continue;
        }
        let header = FileHeader {
            content_size,
            file_name: FixedName::new("huge.bin", "file name").expect("a valid name"),
        };
        let mut bytes = encode_request(Version::V3, id, &Request::SendFile(header));
        bytes.extend_from_slice(&[0u8; 32]);
        if stream.write_all(&bytes).is_ok() {
            Tally::add(&tally.granted);
            streams.push(stream);
        }
    }
    streams
}

/// `trickle`: `trickling` connections get one byte a second, `silent` ones nothing.
fn trickle(server: SocketAddr, trickling: usize, silent: usize, tally: &Tally, stop: &AtomicBool) {
    let mut tricklers = Vec::with_capacity(trickling);
    let mut quiet = Vec::with_capacity(silent);
    for i in 0..trickling + silent {
        let from = format!("127.0.2.{}", 1 + i % 100);
        match connect_from(server, &from) {
            Ok(stream) => {
                Tally::add(&tally.connections);
                stream.set_nonblocking(true).expect("nonblocking");
                if i < trickling { tricklers.push(stream) } else { quiet.push(stream) }
            }
            Err(_) => Tally::add(&tally.refused),
        }
    }
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for stream in &mut tricklers {
            match stream.write(&[0]) {
                Ok(_) => Tally::add(&tally.granted),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => Tally::add(&tally.refused),
            }
        }
        let second = Duration::from_secs(1);
        while round.elapsed() < second && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `registrations`: 1025s from one address as fast as they are answered.
fn register_flood(
    server: SocketAddr,
    from: &str,
    tag: &str,
    t: usize,
    tally: &Tally,
    stop: &AtomicBool,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = connect_from(server, from) else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        Tally::add(&tally.connections);
        // Many registrations per connection, as a flood would; a new one when cut off.
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let Ok(name) = FixedName::new(&format!("{tag}-flood-{t}-{n}"), "name") else { break };
            match exchange(
                &mut stream,
                &encode_request(Version::V3, ClientId::ZERO, &Request::Register { name }),
            ) {
                Ok(Some(Response::Registered { .. })) => Tally::add(&tally.granted),
                Ok(Some(_)) => Tally::add(&tally.refused),
                // Cut off: connect again.
                Ok(None) | Err(_) => {
                    Tally::add(&tally.refused);
                    break;
                }
            }
        }
    }
}

/// `unconfirmed`: one client's valid uploads over 8 connections, never confirmed.
fn never_confirm(server: SocketAddr, tag: &str, tally: &Tally, stop: &AtomicBool) {
    let key = PrivateKey::generate();
    let name_text = format!("{tag}-hoarder");
    let name = FixedName::new(&name_text, "name").expect("a valid name");
    let Ok(mut first) = connect_from(server, "127.0.0.30") else { return };
    let Some(id) = register_raw(&mut first, &name_text) else { return };
    let public = key.public_key().to_field().expect("a 1024-bit key");
    let request = Request::SendPublicKey { name, public_key: public };
    let Ok(Some(Response::PublicKeyAccepted { encrypted_key, .. })) =
        exchange(&mut first, &encode_request(Version::V3, id, &request))
    else {
        return;
    };
    let aes: AesKey = key.decrypt_aes_key(&encrypted_key).expect("the session key");
    let content = encrypt_to_vec(&aes, &random_bytes(65_536 - 16));
    // Borrowed sessions: further connections from the same address use the same key.
    let mut streams = vec![first];
    for _ in 1..8 {
        if let Ok(stream) = connect_from(server, "127.0.0.30") {
            streams.push(stream);
        }
    }
    tally.connections.fetch_add(streams.len() as u64, Ordering::Relaxed);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for stream in &mut streams {
            n += 1;
            let header = FileHeader {
                content_size: content.len() as u32,
                file_name: FixedName::new(&format!("hoard-{n}.bin"), "file name").expect("a name"),
            };
            let mut bytes = encode_request(Version::V3, id, &Request::SendFile(header));
            bytes.extend_from_slice(&content);
            match exchange(stream, &bytes) {
                Ok(Some(Response::FileReceived { .. })) => Tally::add(&tally.granted),
                _ => Tally::add(&tally.refused),
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// 1025 on `stream`: the new id, or `None` when refused or cut off.
fn register_raw(stream: &mut TcpStream, name: &str) -> Option<ClientId> {
    let name = FixedName::new(name, "name").ok()?;
    match exchange(
        stream,
        &encode_request(Version::V3, ClientId::ZERO, &Request::Register { name }),
    ) {
        Ok(Some(Response::Registered { client_id })) => Some(client_id),
        _ => None,
    }
}

/// Writes `bytes` and reads one response (`None` when the server closed instead).
fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<Option<Response>> {
    stream.write_all(bytes)?;
    let mut head = [0u8; RESPONSE_HEADER_LEN];
    match stream.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let header = ResponseHeader::decode(&head).map_err(io::Error::other)?;
    let mut payload = vec![0u8; header.payload_size as usize];
    stream.read_exact(&mut payload)?;
    decode_response_payload(&header, &payload).map(Some).map_err(io::Error::other)
}

/// A blocking connection from the loopback address `local` (any free port).
fn connect_from(server: SocketAddr, local: &str) -> io::Result<TcpStream> {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("a runtime");
    }
    let local: SocketAddr = format!("{local}:0").parse().map_err(io::Error::other)?;
    let stream = RUNTIME.with(|rt| {
        rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(local)?;
            tokio::time::timeout(WAIT, socket.connect(server))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??
                .into_std()
        })
    })?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    Ok(stream)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut data = vec![0u8; n];
    getrandom::fill(&mut data).expect("OS randomness");
    data
}

fn temp_file(data: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(data).expect("writing a temporary file");
    file
}
