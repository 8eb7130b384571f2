//! The client's side of protocol 4 (issue 14; docs/protocol-v4.md).

pub mod key;
