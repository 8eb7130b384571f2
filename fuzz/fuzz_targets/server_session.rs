//! A script of requests against the real per-connection state machine; the script format
//! and the invariants are documented in `fuzz/harness/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

fuzz_target!(|data: &[u8]| harness::check_session(data));
