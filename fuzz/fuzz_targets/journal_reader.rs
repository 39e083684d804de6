//! `cargo fuzz run journal_reader`: the body is `pop_checker::targets::journal_reader`, which the core's
//! tests also run over the committed corpus in `fuzz/corpus/journal_reader`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pop_checker::targets::journal_reader(data));
