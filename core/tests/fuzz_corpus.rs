//! Replays every committed fuzz input (`fuzz/corpus/<target>`) and every crash the
//! fuzzer found (`fuzz/regressions/<target>`) through the target bodies, on stable Rust.

use pop_checker::corpus;
use pop_checker::targets::TARGETS;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[test]
fn every_committed_fuzz_input_passes() {
    let mut failures = Vec::new();
    for (target, body) in TARGETS {
        let corpus = corpus::inputs("corpus", target);
        assert!(
            corpus.len() >= 10,
            "fuzz/corpus/{target} has {} inputs; run the fuzzer and `cargo fuzz cmin {target}`",
            corpus.len()
        );
        let regressions = corpus::inputs("regressions", target);
        for (file, data) in corpus.iter().chain(&regressions) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {message}", file.display()));
            }
        }
        eprintln!(
            "{target}: {} corpus inputs, {} regressions",
            corpus.len(),
            regressions.len()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
