//! A script of requests against the real per-connection state machine; the script format
//! and the invariants are documented in `securexfer::server::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| securexfer::server::fuzzing::check_session(data));
