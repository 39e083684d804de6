//! `cargo fuzz run znode_payload`: the body is `pop_checker::targets::znode_payload`, which the core's
//! tests also run over the committed corpus in `fuzz/corpus/znode_payload`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pop_checker::targets::znode_payload(data));
