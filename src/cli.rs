//! The command line, and nothing else: `build.rs` includes this file to generate shell
//! completions and man pages, so it may use only `std` and `clap`.

use clap::{Args, Parser, Subcommand, ValueHint};
use std::path::PathBuf;

/// Exit codes, documented in `--help` and the README.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success: every file sent (or downloaded, listed, removed) and verified
  1  an unexpected internal error
  2  usage error (bad flags or arguments)
  3  connection failure (cannot reach the server, or it kept dropping the connection or
     got a broken stream from us; for db migrate: the target database or object store
     failed)
  4  the server refused (2107 after retries, name taken, a protocol-4 refusal such as a
     quota or a name not found, an answer out of protocol, or a server without protocol
     4 for ls, get and rm)
  5  verification failed (checksums or BLAKE3 hashes differed on all four sends, or a
     download's BLAKE3 is not the server's: nothing kept under its name; db verify and
     db migrate: a stored file is not what its record says)
  6  local problem (a file or identity cannot be read or written, a download target
     exists without --force; for serve: the storage directory or the database cannot be
     used)
  7  serve cannot listen on its address (in use, not permitted, not this machine's)
  8  the server's key is not the one trusted for it (it changed since it was first seen,
     or differs from --fingerprint), or --protocol 3 to a server known to speak
     protocol 4: nothing was sent; db migrate: the target presents another server key
  130  interrupted (Ctrl-C)";

/// Send files securely to a storage server you run yourself.
///
/// securexfer speaks protocol 3 of the existing Python servers and C++ clients byte for
/// byte: `serve` runs a server they can use, `register` and `send` are a client that works
/// with them, and `db inspect` shows what a server has stored. Between securexfer's own
/// client and server, protocol 4 (TLS 1.3) also lists, downloads and removes a client's
/// files: `ls`, `get`, `rm`.
#[derive(Debug, Parser)]
#[command(name = "securexfer", version, propagate_version = true, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the storage server.
    Serve(ServeArgs),
    /// Make a key pair, register a name with a server and save the identity.
    Register(RegisterArgs),
    /// Send files to a server and verify them (registers first if there is no identity).
    Send(SendArgs),
    /// List this client's files on a server (protocol 4): size, when stored, BLAKE3 (the
    /// first 16 hex digits) and kept versions, in byte order of their names.
    Ls(LsArgs),
    /// Download stored files (protocol 4). Each is written to .NAME.securexfer-partial in
    /// the target directory and takes its name only once its BLAKE3 matches the server's;
    /// a download cut off leaves that file, and the same get continues it.
    Get(GetArgs),
    /// Remove stored files from a server (protocol 4). The server keeps a removed copy as
    /// a version, as it keeps a replaced one (serve --keep-versions).
    Rm(RmArgs),
    /// Read the server's database.
    #[command(subcommand)]
    Db(DbCommand),
    /// Check which key a server presents over protocol 4 (TLS 1.3) and trust it: on first
    /// contact the key is trusted and saved in known_servers; later, a different key is a
    /// hard failure (exit 8). With --fingerprint, only that key is accepted (and saved).
    Trust(TrustArgs),
    /// Print the completion script for a shell on stdout.
    Completions(CompletionsArgs),
    /// Write the man pages (one per command) into a directory.
    Man(ManArgs),
}

/// `securexfer serve`.
#[derive(Debug, Args)]
#[command(after_help = "Without --port, the port is read from port.info in the working directory \
(one number, as the existing server does); without that file the server warns and uses 1357.")]
pub struct ServeArgs {
    /// Configuration file (default /etc/securexfer/serve.toml, if it exists): keys are the
    /// long flags (`max-file-size = "8G"`). Flags and SECUREXFER_* variables win over it.
    #[arg(long, env = "SECUREXFER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on. The default accepts only this machine; use 0.0.0.0 (or ::) to
    /// accept remote clients.
    #[arg(long, env = "SECUREXFER_LISTEN", default_value = "127.0.0.1", value_name = "ADDR")]
    pub listen: String,
    /// Port to listen on (0 picks a free one, printed at start-up).
    #[arg(long, env = "SECUREXFER_PORT", value_name = "N")]
    pub port: Option<u16>,
    /// Directory where received files are stored, one subdirectory per client id; or an
    /// S3-compatible object store that several servers share, as s3://BUCKET/PREFIX
    /// (endpoint, region and keys from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY; plain http only on loopback or with AWS_ALLOW_HTTP=true).
    #[arg(
        long,
        env = "SECUREXFER_STORAGE",
        default_value = "storage",
        value_name = "DIR|s3://BUCKET/PREFIX",
        value_hint = ValueHint::DirPath
    )]
    pub storage: PathBuf,
    /// SQLite database of clients and files; or a PostgreSQL database that several servers
    /// share, as postgres://USER:PASSWORD@HOST:PORT/DB (no TLS to it yet: loopback or a
    /// private network).
    #[arg(
        long,
        env = "SECUREXFER_DB",
        default_value = "defensive.db",
        value_name = "PATH|URL",
        value_hint = ValueHint::FilePath
    )]
    pub db: PathBuf,
    /// Largest file accepted (encrypted size; suffixes K, M, G). Larger uploads are refused
    /// before anything is read. The protocol's own limit is 4G minus 16 bytes.
    #[arg(long, env = "SECUREXFER_MAX_FILE_SIZE", default_value = "4G", value_name = "SIZE", value_parser = parse_size)]
    pub max_file_size: u64,
    /// Most simultaneous connections. When full, the oldest idle connection that never
    /// made a key exchange is closed to make room; without one, newcomers wait.
    #[arg(long, env = "SECUREXFER_MAX_CONNECTIONS", default_value_t = 2048, value_name = "N")]
    pub max_connections: usize,
    /// Most connections one IP address may hold at once; more are closed at once. 0: no cap.
    #[arg(
        long,
        env = "SECUREXFER_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 128,
        value_name = "N"
    )]
    pub max_connections_per_address: usize,
    /// Seconds a client gets for a whole request header and fixed-size payload, from its
    /// first byte (file content is not included); slower peers are disconnected.
    #[arg(long, env = "SECUREXFER_REQUEST_DEADLINE", default_value_t = 30, value_name = "SECS")]
    pub request_deadline: u64,
    /// Most uploads whose content is being read at once; a 1028 beyond gets 2107 before
    /// its content is read. Each must also average 64 KiB/s after an idle timeout's grace.
    #[arg(long, env = "SECUREXFER_MAX_UPLOADS", default_value_t = 256, value_name = "N")]
    pub max_uploads: usize,
    /// Seconds a client may stay silent, between requests or in the middle of one.
    #[arg(long, env = "SECUREXFER_IDLE_TIMEOUT", default_value_t = 60, value_name = "SECS")]
    pub idle_timeout: u64,
    /// Seconds after a key exchange during which a client that opens one connection per
    /// request may send and confirm files from the same IP address.
    #[arg(long, env = "SECUREXFER_SESSION_WINDOW", default_value_t = 600, value_name = "SECS")]
    pub session_window: u64,
    /// Serve file requests only on the connection that made the key exchange (refuses
    /// clients that open one connection per request).
    #[arg(long, env = "SECUREXFER_STRICT_SESSIONS")]
    pub strict_sessions: bool,
    /// Seconds transfers in flight may run on after SIGINT or SIGTERM.
    #[arg(long, env = "SECUREXFER_GRACE", default_value_t = 30, value_name = "SECS")]
    pub grace: u64,
    /// Free space to keep on the storage file system; uploads that would eat into it are
    /// refused (suffixes K, M, G).
    #[arg(long, env = "SECUREXFER_DISK_RESERVE", default_value = "64M", value_name = "SIZE", value_parser = parse_size)]
    pub disk_reserve: u64,
    /// Serve an existing client that deviates from the protocol. `crc32-ciphertext`: to
    /// clients whose requests carry version byte 1 (the `dor` client; nobody else sends
    /// it), answer 1028 with the zlib CRC-32 of the ciphertext received, as that client
    /// checks, and answer its 1030 with 2104, as it waits for one. Every other client gets
    /// exactly the protocol.
    #[arg(long, env = "SECUREXFER_COMPAT", value_name = "MODE", value_enum)]
    pub compat: Vec<Compat>,
    /// Registrations one IP address (IPv6: one /64) may make per minute, in bursts of up to
    /// twice as many; more get 2107. 0 turns the limit off.
    #[arg(
        long,
        env = "SECUREXFER_REGISTRATIONS_PER_MINUTE",
        default_value_t = 10,
        value_name = "N"
    )]
    pub registrations_per_minute: u32,
    /// Earlier versions kept of each stored file when a newer confirmed upload of the same
    /// name replaces it (under DIR/.versions/; `db inspect` lists them, `db restore` puts
    /// one back). 0 keeps none.
    #[arg(long, env = "SECUREXFER_KEEP_VERSIONS", default_value_t = 1, value_name = "N")]
    pub keep_versions: usize,
    /// How long a protocol-4 upload of known size that its connection left unfinished
    /// (network drop, killed client, server restart) is kept for `send` to resume where it
    /// stopped; 0 keeps none. In an object store, the parts sent so far are kept, and any
    /// instance over the same records can resume them.
    #[arg(
        long,
        env = "SECUREXFER_RESUME_WINDOW",
        default_value = "24h",
        value_name = "DURATION",
        value_parser = parse_window
    )]
    pub resume_window: u64,
    /// Who may register: `open` (anyone, as protocol 3 always did), `token` (protocol 4
    /// clients with an invitation from `securexfer db invite`), `closed` (nobody). Under
    /// token and closed, protocol 3's registration (1025) gets 2107: it cannot carry a
    /// token. Registered clients, and upgrades of protocol-3 clients, work under all three.
    #[arg(
        long,
        env = "SECUREXFER_REGISTRATION",
        value_enum,
        default_value = "open",
        value_name = "POLICY"
    )]
    pub registration: RegistrationPolicy,
    /// Serve metrics in the Prometheus text format on http://ADDR/metrics (for example
    /// 127.0.0.1:9357; port 0 picks a free one, logged at start-up): connections,
    /// requests by code and outcome, refusals by reason, bytes received, uploads by
    /// outcome and their duration, sessions, free disk space, database latency. The
    /// endpoint has no authentication: keep it on loopback or a monitoring network.
    #[arg(long, env = "SECUREXFER_METRICS", value_name = "HOST:PORT")]
    pub metrics: Option<String>,
    /// How log lines are written to stderr: `text` for people, `json` (one object per
    /// line) for log collectors.
    #[arg(
        long,
        env = "SECUREXFER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log warnings and errors only (-q), or more detail (-v: debug, -vv: trace). Without
    /// them, RUST_LOG sets what is logged (default: info).
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Log warnings and errors only.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Who may register with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistrationPolicy {
    /// Anyone.
    Open,
    /// Only with an invitation token (protocol 4).
    Token,
    /// Nobody.
    Closed,
}

/// The server's log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Compatibility settings for existing clients that deviate from the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compat {
    /// Version-1 clients get the CRC-32 of the ciphertext in 2103 and a 2104 for 1030.
    Crc32Ciphertext,
}

/// Connection settings shared by the client commands.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists):
    /// keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_*
    /// variables win over it.
    #[arg(long, env = "SECUREXFER_CONFIG", value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of
    /// transfer.info, else the server of the latest `register`.
    #[arg(long, env = "SECUREXFER_SERVER", value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// Client name to register (default: line 2 of transfer.info).
    #[arg(long, env = "SECUREXFER_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// The identity file (me.info; priv.key is kept beside it). Default: me.info in the
    /// working directory if there is one (the existing client's), else this server's
    /// identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer).
    #[arg(long, env = "SECUREXFER_IDENTITY", value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub identity: Option<PathBuf>,
    /// Seconds to wait for a connection.
    #[arg(long, env = "SECUREXFER_CONNECT_TIMEOUT", default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
    /// Seconds to wait for the server on each read or write.
    #[arg(long, env = "SECUREXFER_TIMEOUT", default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
    /// Say what the client does on stderr: connections, requests and answers, retries
    /// (-vv for more). Without it, RUST_LOG sets what is logged.
    #[arg(long, short, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server's key
    /// checked against known_servers) and falls back to protocol 3, with a warning, only
    /// for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8)
    /// for a server known to speak 4; `4` never falls back.
    #[arg(
        long,
        env = "SECUREXFER_PROTOCOL",
        value_enum,
        default_value = "auto",
        value_name = "3|4|auto"
    )]
    pub protocol: ProtocolArg,
    /// The key the server must present over protocol 4, as `securexfer db fingerprint`
    /// shows it on the server (SHA256:...): pins it before the first contact. With a key
    /// already in known_servers, the two must agree.
    #[arg(long, env = "SECUREXFER_SERVER_FINGERPRINT", value_name = "SHA256:...")]
    pub server_fingerprint: Option<String>,
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    /// Protocol 3 only (the existing servers' protocol; it does not authenticate the server).
    #[value(name = "3")]
    Three,
    /// Protocol 4 only.
    #[value(name = "4")]
    Four,
    /// Protocol 4, or 3 for a server never seen speaking 4 that does not speak it.
    Auto,
}

/// `securexfer register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Where to reach the server and who to be.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Replace an existing identity (the old one is kept as me.info.bak).
    #[arg(long)]
    pub force: bool,
    /// The invitation token the server's operator gave (`securexfer db invite`), for a
    /// server whose registration policy is `token` (protocol 4): sxi- and 26 characters.
    #[arg(long, env = "SECUREXFER_TOKEN", value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `securexfer send`.
#[derive(Debug, Args)]
#[command(after_help = "With no FILE, files are taken from transfer.info in the working \
directory (line 3 on), as the existing client does. Flags override that file.")]
pub struct SendArgs {
    /// Files to send, in turn. `-` alone is standard input, stored under --as NAME
    /// (protocol 4 only: its size is known only at its end).
    #[arg(value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub files: Vec<PathBuf>,
    /// Where to reach the server and who to be.
    #[command(flatten)]
    pub client: ClientArgs,
    /// No progress bar and no summary lines (errors are still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Print one JSON object per file on stdout, in argument order, then a summary object
    /// (the schema is in docs/json.md).
    #[arg(long)]
    pub json: bool,
    /// The name to store the file under, instead of its own (one FILE only). Names are up
    /// to 254 bytes of printable ASCII. With -r, the name of the stored folder instead of
    /// the DIR's own (one DIR only).
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// Send folders: every regular file under each DIR, stored as DIR's name and its path
    /// below it. Symbolic links and special files are skipped with a note (never
    /// followed), empty folders too. Protocol 4 only.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Send nothing: print what would be sent, which stored files it would replace and
    /// what the server would refuse: a file/folder conflict, --no-clobber, the quota (with
    /// --json, one object per file). Protocol 4 only (protocol 3 cannot list what is
    /// stored).
    #[arg(long)]
    pub dry_run: bool,
    /// Send file content at most RATE bytes per second, as curl's --limit-rate: a number
    /// with an optional K, M or G (binary units), e.g. 500K or 10M. Both protocols.
    #[arg(long, env = "SECUREXFER_LIMIT_RATE", value_name = "RATE", value_parser = parse_rate)]
    pub limit_rate: Option<u64>,
    /// Never replace a stored file: a file whose name is taken on the server is refused
    /// (reported, exit 4) and the others are sent. Protocol 4 only.
    #[arg(long)]
    pub no_clobber: bool,
    /// Send over N connections at once, each taking the next file (or the next run of
    /// small files) as it is free; the bars show the whole run. Protocol 4 only. With
    /// --limit-rate, the rate is shared among them.
    #[arg(
        long,
        env = "SECUREXFER_PARALLEL",
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=16)
    )]
    pub parallel: u16,
}

/// `securexfer ls`.
#[derive(Debug, Args)]
#[command(after_help = "Patterns are matched by the client against each stored name: * any \
run of characters but /, ? one character, [abc] [a-z] [!a] one of a set. Quote them so the \
shell leaves them alone. Needs protocol 4 (the server must know this client's key).")]
pub struct LsArgs {
    /// Only names matching these patterns (a name without *, ? or [ must exist). Default:
    /// every file.
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Where to reach the server and who to be.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print sizes as byte counts, not in binary units (1.5 MiB).
    #[arg(long)]
    pub bytes: bool,
    /// Print one JSON object per file on stdout, then a summary object (docs/json.md).
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors (the exit code says whether every pattern matched).
    #[arg(long, short)]
    pub quiet: bool,
}

/// `securexfer get`.
#[derive(Debug, Args)]
#[command(after_help = "A file is written as DIR/NAME (the last component of a stored path), \
never anywhere else whatever the server sends. With -r, a stored folder docs/x is written as \
DIR/x/… (its last component and the paths below it), folders made as needed, never through \
a symbolic link. An existing file is refused unless --force. With -o -, the bytes go to \
stdout as they arrive (one NAME only): a failed verification then exits 5 after they were \
written.")]
pub struct GetArgs {
    /// Stored names to download, in turn.
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
    /// Download folders: every file under each NAME (a NAME that is a file is that file).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Where to write them: a directory that exists, or - for stdout.
    #[arg(short, long, value_name = "DIR", default_value = ".", value_hint = ValueHint::DirPath)]
    pub output: PathBuf,
    /// Replace a local file of the same name.
    #[arg(long)]
    pub force: bool,
    /// Receive file content at most RATE bytes per second, as curl's --limit-rate: a
    /// number with an optional K, M or G (binary units), e.g. 500K or 10M.
    #[arg(long, env = "SECUREXFER_LIMIT_RATE", value_name = "RATE", value_parser = parse_rate)]
    pub limit_rate: Option<u64>,
    /// Where to reach the server and who to be.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print one JSON object per file on stdout (stderr with -o -), then a summary object
    /// (docs/json.md).
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `securexfer rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Stored names to remove, in turn.
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
    /// Remove folders: every file under each NAME, each kept as a version as a single rm
    /// keeps one (a NAME that is a file is that file).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Where to reach the server and who to be.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print one JSON object per file on stdout, then a summary object (docs/json.md).
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `securexfer db ...`.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Show clients, files and kept versions, read-only (safe while the server runs), from a
    /// SQLite file or a postgres:// address, checking each file against a local storage
    /// directory or an s3:// object store (listed, never written).
    /// Sizes are in binary units (--bytes for byte counts); on a terminal, long names are
    /// cut with an ellipsis to fit its width (never in a pipe or a file).
    Inspect(InspectArgs),
    /// Re-read every stored file and kept version and check it against its record (size
    /// and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any.
    Verify(VerifyArgs),
    /// Put an earlier version of a stored file back; the current one becomes a version in
    /// turn. Run it with the server stopped (it refuses while one holds the storage).
    Restore(RestoreArgs),
    /// Print the fingerprint of the server's key (`SHA256:...`, kept in DB.key beside the
    /// database, or in a PostgreSQL database itself), for clients to pin before their
    /// first contact. Exit 6 if there is no
    /// key yet (`serve` makes it at its first start).
    Fingerprint(FingerprintArgs),
    /// Make an invitation for `serve --registration token`: prints a single-use token
    /// (`sxi-` and 26 characters) for one protocol-4 client to register with. The database
    /// keeps only its SHA-256, its name and expiry, and when and by whom it was used.
    Invite(InviteArgs),
    /// Show or set a client's quota: the bytes its files, kept versions and open uploads
    /// may take and how many files it may store. Checked by protocol 4 before any content
    /// of an upload is accepted (protocol 3 uploads are not counted against it). Safe
    /// while the server runs; new uploads see a change at once.
    Quota(QuotaArgs),
    /// Move a single machine's records and files to PostgreSQL and an object store (the
    /// configuration of many `serve` instances): every client, key, quota, invitation,
    /// file and kept version, each file hashed on the way and read back from the store.
    /// Safe while the server runs, and re-runnable: a second run moves only what is not
    /// there yet as the source has it. Exit 5 if a file is not what its record says.
    Migrate(MigrateArgs),
}

/// `securexfer db migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// What to move: the SQLite database and the storage directory of one server.
    #[arg(long, value_name = "sqlite:PATH,storage:DIR")]
    pub from: String,
    /// Where to: the PostgreSQL database and the object store (endpoint and credentials
    /// from the AWS_* variables, as for serve). The schema is migrated if need be.
    #[arg(long, value_name = "postgres://…,s3://BUCKET/PREFIX")]
    pub to: String,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `securexfer db quota`.
#[derive(Debug, Args)]
pub struct QuotaArgs {
    /// The server's database: a SQLite file, or postgres://… (every instance over it sees
    /// a change at its next upload).
    #[arg(
        long,
        env = "SECUREXFER_DB",
        default_value = "defensive.db",
        value_name = "PATH|URL",
        value_hint = ValueHint::FilePath
    )]
    pub db: PathBuf,
    /// The client (name or id).
    #[arg(long, value_name = "NAME|ID")]
    pub client: String,
    /// Set the bytes quota: a size with an optional K, M, G or T (binary units), or `none`.
    #[arg(long, value_name = "SIZE|none", value_parser = parse_limit_size)]
    pub bytes: Option<Limit>,
    /// Set the files quota: a number, or `none`.
    #[arg(long, value_name = "N|none", value_parser = parse_limit_count)]
    pub files: Option<Limit>,
    /// Print JSON instead of lines (sizes are byte counts there).
    #[arg(long)]
    pub json: bool,
}

/// A quota's value on the command line: a number, or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

fn parse_limit_size(text: &str) -> Result<Limit, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    parse_size(text).map(|n| Limit(Some(n)))
}

fn parse_limit_count(text: &str) -> Result<Limit, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    text.trim()
        .parse()
        .map(|n| Limit(Some(n)))
        .map_err(|_| format!("{text:?} is not a number of files (or none)"))
}

/// `securexfer db invite`.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// The server's database: a SQLite file, or a `postgres://` address (every instance
    /// over it takes the token).
    #[arg(
        long,
        env = "SECUREXFER_DB",
        default_value = "defensive.db",
        value_name = "PATH|URL",
        value_hint = ValueHint::FilePath
    )]
    pub db: PathBuf,
    /// The client name the token is for: registering with it under another name is
    /// refused. Without it, any name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// How long the token is valid: a number with s, m, h or d (seconds, minutes, hours,
    /// days).
    #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = parse_duration)]
    pub expires: u64,
}

/// `securexfer db fingerprint`.
#[derive(Debug, Args)]
pub struct FingerprintArgs {
    /// The server's database (the key is DB.key beside it), or postgres://… (the key every
    /// instance over it presents, kept in it).
    #[arg(
        long,
        env = "SECUREXFER_DB",
        default_value = "defensive.db",
        value_name = "PATH|URL",
        value_hint = ValueHint::FilePath
    )]
    pub db: PathBuf,
}

/// `securexfer db verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The server's database.
    #[arg(long, env = "SECUREXFER_DB", default_value = "defensive.db", value_name = "PATH")]
    pub db: PathBuf,
    /// The storage directory.
    #[arg(long, env = "SECUREXFER_STORAGE", default_value = "storage", value_name = "DIR")]
    pub storage: PathBuf,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `securexfer db restore`.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct RestoreArgs {
    /// The server's database.
    #[arg(long, env = "SECUREXFER_DB", default_value = "defensive.db", value_name = "PATH")]
    pub db: PathBuf,
    /// The server's storage directory.
    #[arg(long, env = "SECUREXFER_STORAGE", default_value = "storage", value_name = "DIR")]
    pub storage: PathBuf,
    /// The client (name or id).
    #[arg(long, value_name = "NAME|ID")]
    pub client: String,
    /// The file, by its stored name (or the name the client sent).
    #[arg(long, value_name = "NAME")]
    pub file: String,
    /// Which version (as `db inspect` numbers them); default: the newest.
    #[arg(long, value_name = "N")]
    pub version: Option<i64>,
}

/// `securexfer db inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The server's database: a SQLite file, or postgres://USER:PASSWORD@HOST:PORT/DB
    /// (only read: its schema must be this version's, which `serve` migrates to).
    #[arg(
        long,
        env = "SECUREXFER_DB",
        default_value = "defensive.db",
        value_name = "PATH|URL",
        value_hint = ValueHint::FilePath
    )]
    pub db: PathBuf,
    /// Storage directory, or s3://BUCKET/PREFIX (endpoint and credentials from the AWS_*
    /// variables, as for serve), to check that recorded files are present.
    #[arg(
        long,
        env = "SECUREXFER_STORAGE",
        default_value = "storage",
        value_name = "DIR|URL",
        value_hint = ValueHint::DirPath
    )]
    pub storage: PathBuf,
    /// Show only this client (name or id). A name or id that matches no client is an
    /// error (exit 2).
    #[arg(long, value_name = "NAME|ID")]
    pub client: Option<String>,
    /// Print sizes as byte counts, not in binary units (1.50 MiB).
    #[arg(long)]
    pub bytes: bool,
    /// Print JSON instead of tables (sizes are always byte counts there).
    #[arg(long)]
    pub json: bool,
}

/// `securexfer completions`.
/// `securexfer trust`.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Server address as HOST:PORT; the port defaults to 1357. Default: the server of the
    /// latest `register`.
    #[arg(long, env = "SECUREXFER_SERVER", value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// The key the server must present, as `securexfer db fingerprint` shows it on the
    /// server (SHA256:...): pins it before the first contact, or accepts a new key the
    /// operator confirmed.
    #[arg(long, visible_alias = "server-fingerprint", value_name = "SHA256:...")]
    pub fingerprint: Option<String>,
    /// Seconds to wait for the connection and the handshake.
    #[arg(long, env = "SECUREXFER_CONNECT_TIMEOUT", default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
}

#[derive(Debug, Args)]
#[command(after_help = "For example: securexfer completions bash > \
/usr/share/bash-completion/completions/securexfer")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: CompletionShell,
}

/// The shells `securexfer completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    /// Bash (with bash-completion).
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
    /// PowerShell.
    Powershell,
    /// Elvish.
    Elvish,
}

/// `securexfer man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write securexfer.1 and the subcommands' pages into (created if needed).
    #[arg(value_name = "DIR", default_value = ".", value_hint = ValueHint::DirPath)]
    pub dir: PathBuf,
}

/// Parses sizes such as `1048576`, `512K`, `64M`, `4G` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        Some((i, 't' | 'T')) => (&text[..i], 40),
        _ => (text, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use a number with an optional K, M or G"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a rate such as `500K` or `10M/s` (bytes per second, binary units); 0 is refused
/// (no limit is no flag).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let bare = trimmed.strip_suffix("/s").unwrap_or(trimmed);
    let bare = bare
        .strip_suffix(['b', 'B'])
        .filter(|b| b.ends_with(['k', 'K', 'm', 'M', 'g', 'G']))
        .unwrap_or(bare);
    match parse_size(bare) {
        Ok(0) => Err(format!("{text:?}: a rate must be above 0 (leave --limit-rate out for none)")),
        Ok(rate) => Ok(rate),
        Err(_) => Err(format!(
            "{text:?} is not a rate: use bytes per second with an optional K, M or G, e.g. 500K"
        )),
    }
}

/// Parses a window such as `--resume-window`: a duration as [`parse_duration`] takes, or
/// 0 (with or without a unit) for "none".
pub fn parse_window(text: &str) -> Result<u64, String> {
    match text.trim().trim_end_matches(['s', 'm', 'h', 'd']) {
        "0" => Ok(0),
        _ => parse_duration(text),
    }
}

/// Parses durations such as `90s`, `30m`, `12h`, `7d` into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, 's')) => (&text[..i], 1),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 'h')) => (&text[..i], 3600),
        Some((i, 'd')) => (&text[..i], 86_400),
        _ => (text, 1),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a duration: use a number with s, m, h or d (say 7d)")
    })?;
    match n.checked_mul(unit) {
        Some(0) => Err("a duration of 0 makes a token that is never valid".to_owned()),
        Some(secs) => Ok(secs),
        None => Err(format!("{text:?} is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_take_s_m_h_and_d() {
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(12 * 3600));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("90"), Ok(90));
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_has_help_text() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} --{id} has no help text");
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "securexfer");
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn rates_are_sizes_per_second_above_zero() {
        assert_eq!(parse_rate("500K"), Ok(500 << 10));
        assert_eq!(parse_rate("10M/s"), Ok(10 << 20));
        assert_eq!(parse_rate("2MB/s"), Ok(2 << 20));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("0").unwrap_err().contains("above 0"));
        assert!(parse_rate("fast").unwrap_err().contains("not a rate"));
    }
}
