//! `cargo fuzz run input_sequence`: the body is `pop_checker::targets::input_sequence`, which the core's
//! tests also run over the committed corpus in `fuzz/corpus/input_sequence`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pop_checker::targets::input_sequence(data));
