//! Protocol 4's per-connection state machine on arbitrary client frames; the checks live
//! in `fuzz/harness/v4_session.rs` so that `tests/suite/fuzz_corpus.rs` replays them.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

fuzz_target!(|data: &[u8]| harness::check_v4_session(data));
