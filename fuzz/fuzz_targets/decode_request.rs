//! The request and response decoders on arbitrary bytes, with round trips through the
//! encoders; the checks live in the library so that `tests/suite/fuzz_corpus.rs` replays them.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

fuzz_target!(|data: &[u8]| harness::check_decode(data));
