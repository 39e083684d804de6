//! `cargo fuzz run settings_assignment`: the body is `pop_checker::targets::settings_assignment`, which the core's
//! tests also run over the committed corpus in `fuzz/corpus/settings_assignment`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pop_checker::targets::settings_assignment(data));
