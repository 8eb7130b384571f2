//! The request and response decoders on arbitrary bytes, with round trips through the
//! encoders; the checks live in the library so that `tests/fuzz_corpus.rs` replays them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| securexfer::server::fuzzing::check_decode(data));
