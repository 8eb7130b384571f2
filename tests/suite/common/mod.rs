//! Test harness shared by the integration tests: runs the real `securexfer` binary.
//!
//! Servers listen on 127.0.0.1 with port 0; the harness reads the bound address from the
//! start-up line and kills the process when the handle drops, so tests stop what they start.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_securexfer"))
}

/// A `securexfer` command with a clean environment for its settings.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars() {
        if key.starts_with("SECUREXFER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    // The client tests written before protocol 4 are protocol-3 tests (byte counts, the
    // fake and Python peers, captures): they speak 3 unless a test asks otherwise with
    // `--protocol` (the flag wins over the variable) or removes the variable, as the
    // protocol-4 tests in v4_client do to test the default, `auto`.
    cmd.env("SECUREXFER_PROTOCOL", "3");
    cmd
}

/// A running `securexfer serve` in its own temporary directory.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// The server key's fingerprint from the second start-up line, `SHA256:…`.
    pub fingerprint: String,
    _temp: Option<tempfile::TempDir>,
    log: std::sync::Arc<std::sync::Mutex<ServerLog>>,
}

/// The server's stderr and what has been read of it. Both a background thread (so that
/// the server never blocks on a full pipe) and [`Server::log`] drain the pipe, under one
/// lock and without blocking, so `log()` returns everything the server had written by the
/// time it was called: a thread that had not been scheduled yet cannot make a test read an
/// old log (CI once did).
pub struct ServerLog {
    pipe: Option<std::process::ChildStderr>,
    text: String,
}

impl ServerLog {
    /// Reads what the pipe holds now; at its end, forgets the pipe.
    fn drain(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else { return };
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    self.pipe = None;
                    return;
                }
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.pipe = None;
                    return;
                }
            }
        }
    }
}

impl Server {
    /// Starts a server in a fresh temporary directory with extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().to_owned();
        let mut server = Server::start_in(&dir, extra);
        server._temp = Some(temp);
        server
    }

    /// Starts a server whose storage and database live in `dir` (kept by the caller, so a
    /// test can restart a server on the same state).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Server {
        Server::start_with(dir, extra, |_| {})
    }

    /// Like [`Server::start_in`], with a chance to adjust the command (limits, say).
    pub fn start_with(dir: &Path, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        Server::launch(dir, "server.db", extra, adjust)
    }

    /// Starts a server over the database `db` (a `postgres://` address, say) with its
    /// storage in a fresh temporary directory.
    pub fn start_on(db: &str, extra: &[&str]) -> Server {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut server = Server::launch(temp.path(), db, extra, |_| {});
        server._temp = Some(temp);
        server
    }

    /// Starts a server over the database `db` with its storage in `dir` (kept by the
    /// caller, so a test can restart it on the same state).
    pub fn start_in_on(dir: &Path, db: &str, extra: &[&str]) -> Server {
        Server::launch(dir, db, extra, |_| {})
    }

    /// Starts a server over the database `db` and the storage `storage` (an `s3://`
    /// address, say), in `dir` (kept by the caller, so a test can restart it on the same
    /// state).
    pub fn start_in_on_storage(dir: &Path, db: &str, storage: &str, extra: &[&str]) -> Server {
        Server::launch_with(dir, db, storage, extra, |_| {})
    }

    /// Like [`Server::start_in_on_storage`], with a chance to adjust the command (its
    /// environment, say).
    pub fn start_in_on_storage_with(
        dir: &Path,
        db: &str,
        storage: &str,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Server {
        Server::launch_with(dir, db, storage, extra, adjust)
    }

    fn launch(dir: &Path, db: &str, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        Server::launch_with(dir, db, "storage", extra, adjust)
    }

    fn launch_with(
        dir: &Path,
        db: &str,
        storage: &str,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Server {
        let mut cmd = command();
        adjust(&mut cmd);
        cmd.current_dir(dir)
            .args(["serve", "--port", "0", "--storage", storage, "--db", db])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start securexfer serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read start-up line");
        let addr: SocketAddr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in start-up line {line:?}"));
        // The second line names the server key's fingerprint (protocol 4).
        let mut second = String::new();
        stdout.read_line(&mut second).expect("read the fingerprint line");
        let fingerprint = second
            .trim()
            .strip_prefix("server key fingerprint ")
            .unwrap_or_else(|| panic!("no fingerprint in the second line {second:?}"))
            .to_owned();
        let stderr = child.stderr.take().expect("stderr");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stderr);
        // SAFETY: fcntl(2) on a pipe this process owns (it stays open inside the log).
        unsafe {
            libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK)
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(ServerLog {
            pipe: Some(stderr),
            text: String::new(),
        }));
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            loop {
                let mut state = sink.lock().unwrap();
                state.drain();
                if state.pipe.is_none() {
                    return;
                }
                drop(state);
                let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: poll(2) on one valid pollfd; the fd stays open while the pipe is
                // in the log, and a closed one only makes poll report POLLNVAL.
                unsafe { libc::poll(&mut poll, 1, 100) };
            }
        });
        Server { child, addr, dir: dir.to_owned(), _temp: None, log, fingerprint }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The database file.
    pub fn db(&self) -> PathBuf {
        self.dir.join("server.db")
    }

    /// Waits (up to 20 s) until the server's log contains `needle`.
    ///
    /// # Panics
    /// When it never does, with the log.
    pub fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        let mut log = self.log.lock().unwrap();
        log.drain();
        log.text.clone()
    }

    /// Sends SIGTERM and waits (up to `timeout`) for a clean exit; returns its status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_timeout(&mut self.child, timeout)
    }

    /// Whether the server process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child up to `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs `securexfer ARGS` in `dir` and returns its output.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    command().current_dir(dir).args(args).stdin(Stdio::null()).output().expect("run securexfer")
}

/// Deterministic pseudo-random bytes (xorshift), for test files.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// What a test that replays the shared captures does about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapturesDecision {
    /// They are here: run.
    Run,
    /// They are absent on a developer's machine: say so and pass.
    Skip,
    /// They are absent in CI, which always has them: a replay that replayed nothing must
    /// not count as passed.
    Fail,
}

/// The decision for captures that are `present` or not, with `ci` the value of the `CI`
/// environment variable (`true` in CI, as GitHub Actions sets it).
pub fn captures_decision(present: bool, ci: Option<&str>) -> CapturesDecision {
    match (present, ci == Some("true")) {
        (true, _) => CapturesDecision::Run,
        (false, false) => CapturesDecision::Skip,
        (false, true) => CapturesDecision::Fail,
    }
}

/// Where the shared captures are, or `None` (after printing `SKIPPED: …`) when they are
/// absent. Every test that replays them starts with
/// `let Some(captures) = common::captures_dir() else { return };`.
///
/// # Panics
/// When they are absent and `CI` is `true`.
pub fn captures_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/captures");
    let ci = std::env::var("CI").ok();
    match captures_decision(dir.is_dir(), ci.as_deref()) {
        CapturesDecision::Run => Some(dir),
        CapturesDecision::Skip => {
            eprintln!("SKIPPED: {} not found (CI always has it)", dir.display());
            None
        }
        CapturesDecision::Fail => {
            panic!("{} not found, and CI=true: CI must replay the captures", dir.display())
        }
    }
}

/// The value of `var`, which names a real backend `.ci/services.sh` started (PostgreSQL,
/// the S3-compatible server), or `None` (after printing `SKIPPED: …`) when it is unset: a
/// developer without the services still runs everything else. Same rule as the captures:
/// CI always starts them, so there an unset variable fails the test rather than letting a
/// test that tested nothing pass.
///
/// # Panics
/// When `var` is unset and `CI` is `true`.
pub fn real_backend(var: &str) -> Option<String> {
    let value = std::env::var(var).ok().filter(|v| !v.is_empty());
    let ci = std::env::var("CI").ok();
    match captures_decision(value.is_some(), ci.as_deref()) {
        CapturesDecision::Run => value,
        CapturesDecision::Skip => {
            eprintln!(
                "SKIPPED: {var} is not set (start the services with \
                 `eval \"$(.ci/services.sh start)\"`; CI always has them)"
            );
            None
        }
        CapturesDecision::Fail => {
            panic!("{var} is not set, and CI=true: .ci/run must start the services")
        }
    }
}

/// The test PostgreSQL (`postgres://USER:PASSWORD@127.0.0.1:PORT/DB`), see [`real_backend`].
pub fn test_postgres() -> Option<String> {
    real_backend("SECUREXFER_TEST_POSTGRES")
}

/// The test S3-compatible server's endpoint (`http://127.0.0.1:PORT`), with its bucket
/// (`s3://BUCKET`); credentials are in the usual `AWS_*` variables. See [`real_backend`].
pub fn test_s3() -> Option<(String, String)> {
    let bucket = real_backend("SECUREXFER_TEST_S3")?;
    let endpoint = real_backend("AWS_ENDPOINT_URL")?;
    Some((endpoint, bucket))
}

/// A fresh, empty place in the test S3-compatible server's bucket, as
/// `s3://BUCKET/PREFIX`, or `None` (skipped, see [`real_backend`]). Each test gets a
/// prefix of its own, so tests run in parallel without seeing each other's objects.
pub fn fresh_s3() -> Option<String> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let (_endpoint, bucket) = test_s3()?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Some(format!("{}/test-{}-{n}-{nanos}", bucket.trim_end_matches('/'), std::process::id()))
}

/// A fresh, empty database on the test PostgreSQL, as a `postgres://` address, or `None`
/// (skipped, see [`real_backend`]). Each test gets its own, so tests run in parallel
/// without seeing each other's rows; they go when the throwaway cluster is stopped.
pub fn fresh_postgres() -> Option<String> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let admin = test_postgres()?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("securexfer_test_{}_{n}_{nanos}", std::process::id());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"));
        let task = tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        drop(client);
        let _ = task.await;
    });
    let (base, _db) = admin.rsplit_once('/').expect("a database in the address");
    Some(format!("{base}/{name}"))
}

pub mod v4;
