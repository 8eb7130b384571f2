//! The client's side of protocol 4 (issue 14; docs/protocol-v4.md): its key per server,
//! the TLS dial that tells a protocol-3-only peer from a protocol-4 server, the choice of
//! protocol `--protocol` and `known_servers` allow, one connection's frames with
//! pipelined requests, uploads (`session`, and many small ones pipelined: `batch`) and downloads, listings and removal (`fetch`).
//!
//! Everything here is typed and printless: the `securexfer` binary decides what to say.

pub mod batch;
pub mod conn;
pub mod error;
pub mod fetch;
pub mod glob;
pub mod key;
pub mod negotiate;
pub mod pending;
pub mod session;
pub mod tls;
pub mod walk;
