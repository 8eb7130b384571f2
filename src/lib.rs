//! securexfer: send files securely to a storage server you run yourself.
//!
//! The library owns the protocol, the cryptography, the storage, the server and the
//! client; the `securexfer` binary owns the command line, configuration and printing.

pub mod client;
pub mod crypto;
pub mod protocol;
pub mod server;
pub mod store;

mod buf;
