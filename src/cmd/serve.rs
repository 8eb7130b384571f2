//! `securexfer serve`: configuration, the listening socket, signals.

use super::out::outln;
use crate::cli::ServeArgs;
use anyhow::Context;
use securexfer::protocol::v4::Registration;
use securexfer::server::{Config, Server};
use securexfer::sys::raise_open_file_limit;
use std::process::ExitCode;
use std::time::Duration;
use tracing::{info, warn};

/// The port the existing server uses when port.info is missing.
const DEFAULT_PORT: u16 = 1357;

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Before any thread allocates: see the function for why (the object store's parts).
    securexfer::sys::fix_mmap_threshold(4 << 20);
    let port = resolve_port(args.port)?;
    let max_content = u32::try_from(args.max_file_size)
        .unwrap_or(u32::MAX)
        .min(securexfer::protocol::MAX_CONTENT_SIZE);
    let config = Config {
        max_content,
        max_connections: args.max_connections.max(1),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        session_window: Duration::from_secs(args.session_window),
        strict_sessions: args.strict_sessions,
        grace: Duration::from_secs(args.grace),
        disk_reserve: args.disk_reserve,
        compat_crc32_ciphertext: args.compat.contains(&crate::cli::Compat::Crc32Ciphertext),
        registrations_per_minute: args.registrations_per_minute,
        keep_versions: args.keep_versions,
        request_deadline: Duration::from_secs(args.request_deadline.max(1)),
        max_connections_per_address: args.max_connections_per_address,
        max_uploads: args.max_uploads.max(1),
        registration: match args.registration {
            crate::cli::RegistrationPolicy::Open => Registration::Open,
            crate::cli::RegistrationPolicy::Token => Registration::Token,
            crate::cli::RegistrationPolicy::Closed => Registration::Closed,
        },
        max_file_size: args.max_file_size,
        resume_window: Duration::from_secs(args.resume_window),
        ..Config::new(args.storage.clone(), args.db.clone())
    };
    raise_open_file_limit();
    // What logs and errors show of the database: never a PostgreSQL password.
    let db_shown = securexfer::store::postgres::redacted(&args.db.to_string_lossy());
    let key = if securexfer::store::postgres::is_postgres_url(&db_shown) {
        format!("in {db_shown}")
    } else {
        securexfer::server::identity::key_path(&args.db).display().to_string()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(1024)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // In the runtime: a PostgreSQL pool needs one from its first connection on.
        let server = Server::open(config).await.map_err(|cause| StartError::Open {
            storage: args.storage.display().to_string(),
            db: db_shown.clone(),
            cause,
        })?;
        let listener =
            tokio::net::TcpListener::bind((args.listen.as_str(), port)).await.map_err(|e| {
                StartError::listen(format!("{}:{port}", args.listen), &args.listen, "--port", e)
            })?;
        let server = match &args.metrics {
            Some(address) => server.with_metrics(metrics_listener(address).await?),
            None => server,
        };
        let addr = listener.local_addr()?;
        // The one line on stdout: scripts and tests read the port from it.
        outln!("securexfer listening on {addr}");
        // The second line: what protocol-4 clients pin (the first stays as scripts read it).
        // (outln! flushes each line, and a reader that went away after the first line
        // is not an error: the server goes on.)
        outln!("server key fingerprint {}", server.fingerprint());
        info!(fingerprint = server.fingerprint(), key = %key, "server key (protocol 4)");
        if addr.ip().is_loopback() {
            info!("only this machine can connect; use --listen 0.0.0.0 to accept remote clients");
        }
        info!(storage = %args.storage.display(), db = %db_shown, "serving");
        server.run(listener, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Why `serve` could not start, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The storage (directory or object store) or the database cannot be used (exit 6).
    #[error("cannot start with storage {storage} and database {db}: {cause}")]
    Open {
        /// The storage directory or object store.
        storage: String,
        /// The database.
        db: String,
        /// Why.
        cause: securexfer::server::ServerError,
    },
    /// The address cannot be listened on (exit 7).
    #[error("cannot listen on {address}: {why}")]
    Listen {
        /// `ADDR:PORT`.
        address: String,
        /// The cause and what to do.
        why: String,
    },
}

/// The listener for `--metrics HOST:PORT`; its address is logged (the port may be 0).
async fn metrics_listener(address: &str) -> Result<tokio::net::TcpListener, StartError> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| StartError::listen(address.to_owned(), host, "--metrics address", e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::listen(address.to_owned(), host, "--metrics address", e))?;
    info!(address = %bound, "metrics on http://{bound}{}", securexfer::server::METRICS_PATH);
    Ok(listener)
}

impl StartError {
    /// `address` (`HOST:PORT`, given with `flag`) could not be listened on.
    fn listen(address: String, host: &str, flag: &str, e: std::io::Error) -> StartError {
        use std::io::ErrorKind;
        let why = match e.kind() {
            ErrorKind::AddrInUse => {
                format!("another program listens there; stop it or choose another {flag}")
            }
            ErrorKind::PermissionDenied => {
                format!("not permitted ({e}); ports below 1024 need root or CAP_NET_BIND_SERVICE")
            }
            ErrorKind::AddrNotAvailable => {
                format!("{host} is not an address of this machine ({e})")
            }
            _ => e.to_string(),
        };
        StartError::Listen { address, why }
    }

    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Open { .. } => 6,
            StartError::Listen { .. } => 7,
        }
    }
}

/// `--port`, else port.info in the working directory, else 1357 with a warning.
fn resolve_port(flag: Option<u16>) -> anyhow::Result<u16> {
    if let Some(port) = flag {
        return Ok(port);
    }
    match std::fs::read_to_string("port.info") {
        Ok(text) => text.trim().parse().map_err(|_| {
            super::UsageError(format!("port.info holds {:?}, not a port number", text.trim()))
                .into()
        }),
        Err(_) => {
            warn!(
                "no --port and no port.info in the working directory; using the default port {DEFAULT_PORT}"
            );
            Ok(DEFAULT_PORT)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutdown signal received");
}
