//! Load driver for a running `securexfer serve` (a benchmark tool, not part of the CLI).
//!
//! Two modes, each with all worker threads released together by a barrier:
//!
//! - `--clients N --size 1M`: N threads, each registers a unique name (RSA key generation
//!   included) and sends its own file of the given size.
//! - `--reconnect --sessions N --size 4K`: a pool of identities is registered first (not
//!   timed); then `--concurrency` threads, one identity each, run N sessions in all, each a
//!   fresh connection, a reconnect (1027) and one send, under a name unique to the session.
//!
//! It prints sessions, errors, wall time, sessions/s, MB/s (10^6 bytes of plaintext per
//! second) and per-session latency percentiles. With `--db` and `--storage` (the server's)
//! it then checks that every file is recorded as verified with the right size and cksum,
//! and that the stored file has that size. It exits non-zero on any error or mismatch.
//!
//! ```sh
//! cargo run --release --example load -- --server 127.0.0.1:PORT --clients 1000 --size 1M \
//!     --db SERVER/defensive.db --storage SERVER/storage
//! ```

/// The binary's own command-line module (std and clap only), for its size parser.
#[allow(dead_code)]
#[path = "../src/cli.rs"]
mod cli;

use clap::Parser;
use securexfer::client::identity::Identity;
use securexfer::client::wire::Timeouts;
use securexfer::client::{Client, ClientError, Sent};
use securexfer::store::{Db, FileRecord};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Stack for worker threads: enough for RSA key generation, small for a thousand threads.
const WORKER_STACK: usize = 512 * 1024;

#[derive(Debug, Parser)]
#[command(about = "Concurrent sessions against a running securexfer server")]
struct Args {
    /// The server, HOST:PORT; several, comma-separated, are used in turn (instances of
    /// one scale-out deployment): client i, or session i, goes to the i-th modulo their
    /// number.
    #[arg(long, value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// Register-and-send mode: this many concurrent clients, one session each.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Reconnect mode: pre-registered identities reconnect (no key generation) and send.
    #[arg(long)]
    reconnect: bool,
    /// Reconnect mode: sessions in all.
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Reconnect mode: concurrent workers, each with its own identity.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Size of each file sent (suffixes K, M, G).
    #[arg(long, default_value = "1M", value_parser = cli::parse_size)]
    size: u64,
    /// The server's database, to verify what was stored.
    #[arg(long)]
    db: Option<PathBuf>,
    /// The server's storage directory, to verify what was stored.
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Where to make the files to send (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seconds for each client read or write (and for connecting).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// One session's plan: who registers or reconnects, what is sent under which name.
#[derive(Clone)]
struct Plan {
    /// The server (instance) this session goes to.
    server: String,
    name: String,
    file: PathBuf,
    sent_name: String,
}

/// What one session did.
struct Outcome {
    plan: Plan,
    /// When the session began (after the barrier released its thread).
    started: Instant,
    took: Duration,
    result: Result<Sent, ClientError>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    raise_open_file_limit();
    let dir = tempfile::tempdir_in(args.work_dir.clone().unwrap_or_else(std::env::temp_dir))
        .expect("cannot make a work directory");
    let run_tag = format!("load{}x{}", std::process::id(), unix_secs() % 1_000_000);
    let outcomes = if args.reconnect {
        run_reconnect(&args, dir.path(), &run_tag)
    } else {
        run_register(&args, dir.path(), &run_tag)
    };
    let errors = report(&outcomes, args.size);
    let mismatches = match (&args.db, &args.storage) {
        (Some(db), Some(storage)) => verify(&outcomes, db, storage, args.size),
        _ => {
            println!("verification skipped: pass --db and --storage (the server's)");
            0
        }
    };
    if errors + mismatches == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn timeouts(args: &Args) -> Timeouts {
    let t = Duration::from_secs(args.timeout.max(1));
    Timeouts { connect: t, io: t }
}

/// `--clients N`: every thread registers its own name and sends its own file.
fn run_register(args: &Args, dir: &Path, tag: &str) -> Vec<Outcome> {
    let plans: Vec<Plan> = (0..args.clients)
        .map(|i| {
            let file = dir.join(format!("c{i}.bin"));
            write_random(&file, args.size);
            Plan {
                server: args.server[i % args.server.len()].clone(),
                name: format!("{tag}-c{i}"),
                file,
                sent_name: format!("c{i}.bin"),
            }
        })
        .collect();
    println!(
        "register mode: {} clients, each registers and sends {} bytes, to {}",
        args.clients,
        args.size,
        args.server.join(",")
    );
    let timeouts = timeouts(args);
    run_together(plans.into_iter().map(|plan| vec![plan]).collect(), move |plans| {
        let plan = plans[0].clone();
        let started = Instant::now();
        let mut client = Client::new(&plan.server, timeouts);
        let result = client
            .register(&plan.name)
            .and_then(|session| client.send_file(&session, &plan.file, &plan.sent_name));
        vec![Outcome { plan, started, took: started.elapsed(), result }]
    })
}

/// `--reconnect`: register a pool (untimed), then each worker reconnects and sends in turn.
fn run_reconnect(args: &Args, dir: &Path, tag: &str) -> Vec<Outcome> {
    let workers = args.concurrency.clamp(1, args.sessions.max(1));
    let timeouts = timeouts(args);
    let identities = register_pool(&args.server[0], timeouts, tag, workers);
    let mut per_worker: Vec<Vec<Plan>> = vec![Vec::new(); workers];
    for s in 0..args.sessions {
        let w = s % workers;
        let file = dir.join(format!("w{w}.bin"));
        if s < workers {
            write_random(&file, args.size);
        }
        per_worker[w].push(Plan {
            server: args.server[s % args.server.len()].clone(),
            name: identities[w].name.clone(),
            file,
            sent_name: format!("s{s}.bin"),
        });
    }
    println!(
        "reconnect mode: {} sessions by {workers} concurrent workers (pre-registered identities), \
         each a new connection, reconnect (1027) and send of {} bytes, to {}",
        args.sessions,
        args.size,
        args.server.join(",")
    );
    let identities = Arc::new(identities);
    let index: HashMap<String, usize> =
        identities.iter().enumerate().map(|(i, id)| (id.name.clone(), i)).collect();
    run_together(per_worker, move |plans| {
        let identity = &identities[index[&plans[0].name]];
        plans.into_iter().map(|plan| reconnect_and_send(timeouts, identity, plan)).collect()
    })
}

fn reconnect_and_send(timeouts: Timeouts, identity: &Identity, plan: Plan) -> Outcome {
    let started = Instant::now();
    let mut client = Client::new(&plan.server, timeouts);
    let result = client.reconnect(identity).and_then(|session| match session {
        Some(session) => client.send_file(&session, &plan.file, &plan.sent_name),
        None => Err(ClientError::NameTaken(format!("{} (reconnect denied)", identity.name))),
    });
    Outcome { plan, started, took: started.elapsed(), result }
}

/// Registers `n` identities, a few at a time.
fn register_pool(server: &str, timeouts: Timeouts, tag: &str, n: usize) -> Vec<Identity> {
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (server, name) = (server.to_owned(), format!("{tag}-r{i}"));
            thread::Builder::new()
                .stack_size(WORKER_STACK)
                .spawn(move || Client::new(&server, timeouts).register(&name).map(|s| s.identity))
                .expect("spawn")
        })
        .collect();
    let identities: Vec<Identity> = handles
        .into_iter()
        .map(|h| h.join().expect("register thread").expect("pre-registering an identity failed"))
        .collect();
    println!(
        "pre-registered {n} identities in {:.2} s (not timed)",
        started.elapsed().as_secs_f64()
    );
    identities
}

/// Starts one thread per plan list, releases them together, and waits until all are done.
fn run_together<F>(work: Vec<Vec<Plan>>, session: F) -> Vec<Outcome>
where
    F: Fn(Vec<Plan>) -> Vec<Outcome> + Send + Sync + 'static,
{
    let barrier = Arc::new(Barrier::new(work.len() + 1));
    let session = Arc::new(session);
    let handles: Vec<_> = work
        .into_iter()
        .map(|plans| {
            let (barrier, session) = (Arc::clone(&barrier), Arc::clone(&session));
            thread::Builder::new()
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    barrier.wait();
                    session(plans)
                })
                .expect("cannot start a worker thread")
        })
        .collect();
    barrier.wait();
    handles.into_iter().flat_map(|h| h.join().expect("worker thread")).collect()
}

/// From the first session's start to the last one's end. (Not this thread's clock: with a
/// thousand threads released at once it may be scheduled seconds after they start.)
fn wall_time(outcomes: &[Outcome]) -> Duration {
    let first = outcomes.iter().map(|o| o.started).min();
    let last = outcomes.iter().map(|o| o.started + o.took).max();
    match (first, last) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    }
}

/// Prints the summary; returns the number of failed sessions.
fn report(outcomes: &[Outcome], size: u64) -> usize {
    let wall = wall_time(outcomes);
    let errors: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let ok = outcomes.len() - errors.len();
    let secs = wall.as_secs_f64();
    let mut took: Vec<Duration> = outcomes.iter().map(|o| o.took).collect();
    took.sort();
    let pct = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    println!("sessions: {}", outcomes.len());
    println!("errors: {}", errors.len());
    println!("wall time: {secs:.3} s");
    println!("sessions/s: {:.1}", ok as f64 / secs);
    println!("MB/s: {:.1}", ok as f64 * size as f64 / secs / 1e6);
    if !took.is_empty() {
        println!(
            "session latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
    }
    for o in errors.iter().take(10) {
        if let Err(e) = &o.result {
            println!("error: {} {}: {e}", o.plan.name, o.plan.sent_name);
        }
    }
    errors.len()
}

/// Checks every successful session's file in the server's database and storage; returns
/// the number of files that are missing or wrong.
fn verify(outcomes: &[Outcome], db_path: &Path, storage: &Path, size: u64) -> usize {
    let db = Db::open_read_only(db_path).expect("cannot open the server's database");
    let files = db.files().expect("cannot read the files table");
    let recorded: HashMap<(&str, &str), &FileRecord> =
        files.iter().map(|f| ((f.client_name.as_str(), f.file_name.as_str()), f)).collect();
    let mut bad = 0;
    let mut checked = 0;
    for o in outcomes {
        let Ok(sent) = &o.result else { continue };
        checked += 1;
        let key = (o.plan.name.as_str(), o.plan.sent_name.as_str());
        if let Err(why) = check_file(recorded.get(&key).copied(), sent, storage, size) {
            if bad < 10 {
                println!("verify: {} {}: {why}", o.plan.name, o.plan.sent_name);
            }
            bad += 1;
        }
    }
    println!(
        "verified: {}/{checked} files recorded as verified with the right size and cksum, stored at that size",
        checked - bad
    );
    bad
}

fn check_file(
    record: Option<&FileRecord>,
    sent: &Sent,
    storage: &Path,
    size: u64,
) -> Result<(), String> {
    let record = record.ok_or("not in the files table")?;
    if !record.verified {
        return Err("recorded but not verified".into());
    }
    if record.size != Some(size) || record.cksum != Some(sent.cksum) {
        return Err(format!(
            "recorded size {:?} cksum {:?}, sent {size} / {}",
            record.size, record.cksum, sent.cksum
        ));
    }
    let stored = std::fs::metadata(storage.join(&record.path_name))
        .map_err(|e| format!("stored file {}: {e}", record.path_name))?
        .len();
    if stored != size {
        return Err(format!("stored file {} is {stored} bytes, sent {size}", record.path_name));
    }
    Ok(())
}

fn write_random(path: &Path, size: u64) {
    let mut data = vec![0u8; size as usize];
    getrandom::fill(&mut data).expect("OS randomness");
    std::fs::write(path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A thousand clients hold a socket and a file each: raise the soft descriptor limit.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
