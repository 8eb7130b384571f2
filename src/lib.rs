//! securexfer: send files securely to a storage server you run yourself.
//!
//! The library owns the protocol, the cryptography, the storage, the server and the
//! client; the `securexfer` binary owns the command line, configuration and printing.
//!
//! `unsafe` is denied everywhere but two fenced modules: the AES-NI intrinsics in
//! `crypto::aes` and the OS calls in [`sys`].
#![deny(unsafe_code)]

pub mod atomic_file;
pub mod client;
pub mod clock;
pub mod content;
pub mod crypto;
pub mod protocol;
pub mod server;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;

mod buf;
