//! Protocol 4 served (issue 14): what happens on a TLS connection after its handshake.
//!
//! - [`client_key`]: the client certificate the handshake requires (an Ed25519 key).
//! - `machine`: the connection's rules as a pure state machine (frames in, decisions
//!   out, the clock as input).
//! - `driver`: the I/O around it (frames read and written, timeouts).
//! - `identity`, `put` and `fetch`: what the requests do (`HELLO`, `REGISTER`, `UPGRADE`;
//!   `PUT`, `COMMIT`, `DISCARD`; `LIST`, `GET`, `RM`) with the records and the blob store.
//! - `folders`: the rule that a path is never both a file and a folder, and the commit
//!   turn of a path.
//! - `group`: commits stored together, their answers in request order.
//! - `errors`: every `ERROR` the server sends.
//!
//! - `resume`: unfinished uploads kept, reported (`RESUME_QUERY`) and continued.

pub mod client_key;
mod driver;
pub mod errors;
mod fetch;
mod folders;
mod group;
mod identity;
pub mod machine;
mod put;
mod resume;

pub use driver::Handshake;
pub use identity::{MAX_IN_FLIGHT, MAX_OPEN_PUTS};
pub use machine::{Admit, Machine, Request, UNREGISTERED_LIFETIME};
pub use resume::reconcile_unfinished;
pub(crate) use resume::remove_expired as remove_expired_unfinished;

use crate::server::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// Serves one protocol-4 connection whose handshake proved `handshake.key`, until the
/// peer leaves, misbehaves or stalls, or `stop` turns true.
pub(crate) async fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    handshake: Handshake,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    driver::Connection::new(shared, stream, peer, handshake).run(stop).await;
}
