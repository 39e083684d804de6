//! `cargo fuzz run name`: the body is `pop_checker::targets::name`, which the core's
//! tests also run over the committed corpus in `fuzz/corpus/name`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pop_checker::targets::name(data));
