//! `cargo fuzz run plugin_manifest`: the body is `pop_checker::targets::plugin_manifest`,
//! which the core's tests also run over the committed corpus in `fuzz/corpus/plugin_manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pop_checker::targets::plugin_manifest(data));
